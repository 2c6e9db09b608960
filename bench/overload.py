"""Overload: clients at 2x the server's queue limit for a minute, twice; then what came back and the server's RSS.

    python bench/overload.py                      # tiny untrained model, --max-queue 32, 64 clients, 2 x 60 s
    python bench/overload.py --run runs/tool_picker/<run-id> --seconds 60

Goals (issue 10): 0 5xx and 0 dropped connections; every refused request is a 429 with Retry-After; the server's
RSS does not grow once the load ends (the second round ends where the first did, within noise).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.util
import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_serve", HERE / "serve.py")
bench_serve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_serve)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(url: str, clients: int, seconds: float, max_tokens: int) -> collections.Counter:
    """`clients` loops posting chat requests for `seconds`: a count per outcome."""
    import httpx

    seen: collections.Counter = collections.Counter()
    stop = time.monotonic() + seconds

    async def client_loop(client, k: int) -> None:
        i = 0
        while time.monotonic() < stop:
            i += 1
            payload = {"model": "tool_picker", "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": f"{bench_serve.TEXTS[(k + i) % 8]} #{k}-{i}"}]}
            try:
                r = await client.post("/v1/chat/completions", json=payload)
            except httpx.TransportError as exc:
                seen[f"transport error: {type(exc).__name__}"] += 1
                continue
            if r.status_code == 429:
                seen["429 with Retry-After" if r.headers.get("retry-after") else "429 WITHOUT Retry-After"] += 1
                await asyncio.sleep(float(r.headers.get("retry-after", "1")) / 10)  # an impatient client
            elif r.status_code >= 500:
                seen[f"{r.status_code}"] += 1
            else:
                seen[str(r.status_code)] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(client_loop(client, k) for k in range(clients)))
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a trained tool_picker run [default: an untrained tiny model]")
    ap.add_argument("--max-queue", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--clients", type=int, default=0, help="concurrent clients [default: 2 x --max-queue]")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=24)
    a = ap.parse_args()
    clients = a.clients or 2 * a.max_queue
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        run = a.run.resolve() if a.run else bench_serve.tiny_run(Path(tmp) / "runs")
        port = bench_serve.free_port()
        proc = bench_serve.start_server(run, port, a.max_batch, 3.0, max_queue=a.max_queue)
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(load(url, 2, 3, a.max_tokens))  # warm up: grammar compiled, first batches run
            rss = [("after warm-up", rss_mb(proc.pid))]
            rounds = []
            for k in range(a.rounds):
                t0 = time.perf_counter()
                rounds.append((asyncio.run(load(url, clients, a.seconds, a.max_tokens)), time.perf_counter() - t0))
                time.sleep(5)  # the load has ended: what the server keeps
                rss.append((f"5 s after round {k + 1}", rss_mb(proc.pid)))
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"overload bench: tool_picker, {'run ' + str(a.run) if a.run else 'untrained tiny model'}, "
          f"--max-queue {a.max_queue}, --max-batch {a.max_batch}, {clients} clients, {a.rounds} x {a.seconds:g} s, "
          f"{os.cpu_count()} CPUs")
    for k, (seen, wall) in enumerate(rounds, 1):
        total = sum(seen.values())
        parts = ", ".join(f"{name} {count}" for name, count in sorted(seen.items()))
        print(f"round {k}: {total} requests in {wall:.1f} s: {parts}")
    for label, mb in rss:
        print(f"server RSS {label}: {mb:.0f} MB")
    bad = sum(c for seen, _ in rounds for name, c in seen.items()
              if name.startswith(("5", "transport", "429 WITHOUT")))
    growth = rss[-1][1] - rss[1][1] if len(rss) > 2 else float("nan")
    print(f"5xx / dropped / 429 without Retry-After: {bad} (goal 0); RSS growth from round 1 to round {a.rounds}: "
          f"{growth:+.0f} MB; server still up: {alive}")


if __name__ == "__main__":
    main()
