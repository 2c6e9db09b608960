"""Serving throughput: 16 concurrent clients vs one sequential client, through the real server process.

    python bench/serve.py                       # a tiny model built on the spot, fixed token budget per request
    python bench/serve.py --run runs/tool_picker/<run-id> --requests 400

Starts `schemabuild serve` as its own process on 127.0.0.1, then measures requests/s and p50/p99 latency for
sequential requests and for `--clients` concurrent ones, and prints both side by side with the ratio
(goal: concurrent ≥ 5× sequential requests/s), checks that every concurrent answer is byte-identical to the
sequential answer to the same request, and (chat route) times streaming: time to first token against the gap
between later tokens, i.e. one decode step as a client sees it (goal: TTFT ≤ 1.5× one step).

Without --run, the model is an untrained tiny one: every request asks for exactly `--max-tokens` tokens of
the task's schema (it rarely stops early), so both modes do the same work per request. With --run, requests
go to the predict route and stop where the trained model stops.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["billy play some Daft Punk", "weather forecast for Tokyo", "gif of a dancing cat", "thanks billy",
         "set a timer for 10 minutes", "look up the release date of the new zelda game", "post an image of a red panda",
         "can you find a yt video about how to bake sourdough bread"]


def tiny_run(runs: Path) -> Path:
    """runs/tool_picker/bench/model: an untrained tiny model with its contract."""
    from transformers import AutoTokenizer

    from schemabuild.contract import build_contract, save_contract
    from schemabuild.task import load_task
    from schemabuild.train.tiny import build_tiny

    task = load_task("tool_picker", ROOT / "tasks")
    run = runs / "tool_picker" / "bench"
    model = build_tiny(task, run / "model")
    save_contract(build_contract(task, AutoTokenizer.from_pretrained(model), base_model="tiny", adapter=False), model)
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, max_batch: int, window_ms: float, max_queue: int = 1024,
                 extra: list[str] | None = None) -> subprocess.Popen:
    """`schemabuild serve` on 127.0.0.1:`port` as its own process (`extra`: more serve flags), once /healthz answers."""
    import httpx

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SCHEMABUILD_TASKS": str(ROOT / "tasks")}
    proc = subprocess.Popen([sys.executable, "-m", "schemabuild", "serve", "tool_picker", "--run", str(run),
                             "--runs-dir", str(run.parent.parent), "--port", str(port), "--max-batch", str(max_batch),
                             "--max-queue", str(max_queue), "--batch-window-ms", str(window_ms), *(extra or [])], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited during startup")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start within 300 s")


def batch_sizes(url: str) -> dict[int, int]:
    """The engine's batch-size counts, read from /metrics."""
    import re

    import httpx

    text = httpx.get(url + "/metrics").text
    return {int(m[0]): int(float(m[1])) for m in re.findall(r'schemabuild_engine_batch_sizes\{[^}]*size="(\d+)"\} (\S+)', text)}


def body(i: int, trained: bool, max_tokens: int) -> tuple[str, dict]:
    text = f"{TEXTS[i % len(TEXTS)]} #{i}"
    if trained:
        return "/v1/tasks/tool_picker/predict", {"input": text}
    return "/v1/chat/completions", {"model": "tool_picker", "max_tokens": max_tokens,
                                    "messages": [{"role": "user", "content": text}]}


async def measure(url: str, n: int, clients: int, trained: bool, max_tokens: int) -> dict:
    """n requests with `clients` in flight at once: requests/s, latency percentiles, completion tokens."""
    import httpx

    latencies: list[float] = []
    answers: dict[int, str] = {}
    tokens = 0
    errors = 0
    next_i = 0

    async def worker(client):
        nonlocal next_i, tokens, errors
        while next_i < n:
            i = next_i
            next_i += 1
            path, payload = body(i, trained, max_tokens)
            t0 = time.perf_counter()
            r = await client.post(path, json=payload)
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1
            else:
                out = r.json()
                tokens += out["usage"]["completion_tokens"]
                answers[i] = str(out["output"]) if trained else out["choices"][0]["message"]["content"]

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        path, payload = body(0, trained, max_tokens)
        await client.post(path, json=payload)  # warm up (grammar compile, first batch)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {"requests": n, "clients": clients, "wall_s": wall, "rps": n / wall, "tokens_per_s": tokens / wall,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], "errors": errors,
            "answers": answers}


async def measure_stream(url: str, n: int, max_tokens: int) -> dict:
    """n streaming chat requests one after another: time to first content chunk, and the median gap between
    later content chunks (one decode step, or one jump-forward span, as the client sees it)."""
    import json

    import httpx

    ttft, gaps = [], []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for i in range(n + 1):
            _, payload = body(i, False, max_tokens)
            t0 = time.perf_counter()
            arrivals = []
            async with client.stream("POST", "/v1/chat/completions", json={**payload, "stream": True}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                            arrivals.append(time.perf_counter())
            if i == 0 or not arrivals:  # the first one warms up
                continue
            ttft.append(arrivals[0] - t0)
            gaps += [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {"ttft_ms": 1000 * statistics.median(ttft), "step_ms": 1000 * statistics.median(gaps) if gaps else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a trained tool_picker run [default: an untrained tiny model]")
    parser.add_argument("--requests", type=int, default=320, help="requests in the concurrent phase")
    parser.add_argument("--sequential-requests", type=int, default=40, help="requests in the sequential phase")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=24, help="tokens per request without --run")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-window-ms", type=float, default=3.0, help="the server's batching window")
    parser.add_argument("--stream-requests", type=int, default=20, help="sequential streaming requests (0 = none)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run.resolve() if args.run else tiny_run(Path(tmp) / "runs")
        port = free_port()
        proc = start_server(run, port, args.max_batch, args.batch_window_ms)
        url = f"http://127.0.0.1:{port}"
        try:
            seq = asyncio.run(measure(url, args.sequential_requests, 1, args.run is not None, args.max_tokens))
            before = batch_sizes(url)
            conc = asyncio.run(measure(url, args.requests, args.clients, args.run is not None, args.max_tokens))
            after = batch_sizes(url)
            stream = asyncio.run(measure_stream(url, args.stream_requests, args.max_tokens)) \
                if args.stream_requests else None
        finally:
            proc.terminate()
            proc.wait(30)

    model = f"run {args.run}" if args.run else f"untrained tiny model, {args.max_tokens} tokens per request"
    print(f"serving bench: tool_picker, {model}, max_batch {args.max_batch}, "
          f"batch window {args.batch_window_ms:g} ms, {os.cpu_count()} CPUs")
    print(f"{'':24}{'sequential':>14}{f'{args.clients} concurrent':>16}")
    for key, label, fmt in [("requests", "requests", "{:.0f}"), ("rps", "requests/s", "{:.2f}"),
                            ("tokens_per_s", "completion tokens/s", "{:.1f}"), ("p50_ms", "p50 latency ms", "{:.1f}"),
                            ("p99_ms", "p99 latency ms", "{:.1f}"), ("errors", "non-200 answers", "{:.0f}")]:
        print(f"{label:24}{fmt.format(seq[key]):>14}{fmt.format(conc[key]):>16}")
    sizes = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    n_batches = sum(sizes.values())
    if n_batches:
        mean = sum(k * v for k, v in sizes.items()) / n_batches
        print(f"concurrent phase: {n_batches} decode steps, mean rows per step {mean:.1f}, "
              f"largest {max(k for k, v in sizes.items() if v)}")
    common = sorted(set(seq["answers"]) & set(conc["answers"]))
    same = sum(seq["answers"][i] == conc["answers"][i] for i in common)
    print(f"answers byte-identical to sequential: {same}/{len(common)}")
    if stream:
        r = stream["ttft_ms"] / stream["step_ms"]
        print(f"streaming: time to first token {stream['ttft_ms']:.1f} ms, one decode step (gap between chunks) "
              f"{stream['step_ms']:.1f} ms, ratio {r:.2f}  (goal <= 1.5: {'met' if r <= 1.5 else 'missed'})")
    ratio = conc["rps"] / seq["rps"]
    print(f"throughput ratio (concurrent / sequential): {ratio:.2f}x  (goal >= 5x: {'met' if ratio >= 5 else 'missed'})")


if __name__ == "__main__":
    main()
