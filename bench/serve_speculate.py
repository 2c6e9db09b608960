"""Serving with prompt-lookup speculation on vs off: sequential and 16-client throughput, two servers, interleaved.

    OMP_NUM_THREADS=1 python bench/serve_speculate.py --run runs/tool_picker/latest [--rounds 2]
    OMP_NUM_THREADS=1 python bench/serve_speculate.py --run <run> --compare engine   # --engine llamacpp vs torch

Starts `schemabuild serve --speculate` and `--no-speculate` (bench/serve.py's `start_server`) on the same run, then
for each round: sequential requests on one server, then the other; then `--clients` concurrent requests on one, then
the other (the order alternating per round), so load from other jobs hits both alike. Requests are bench/serve.py's
predict bodies. Printed per side: requests/s sequential and concurrent, their ratio (goal >= 5x), p50 latency, and
whether every answer is byte-identical across the two servers. `--compare engine` runs the same with
`--engine llamacpp` against `--engine torch` (both speculating) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDES = {"speculate": {"on": ["--speculate"], "off": ["--no-speculate"]},
         "engine": {"llamacpp": ["--engine", "llamacpp"], "torch": ["--engine", "torch"]}}
_spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "bench" / "serve.py")
bench_serve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_serve)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sequential", type=int, default=4, help="sequential requests per side and round")
    ap.add_argument("--concurrent", type=int, default=48, help="concurrent requests per side and round")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--compare", choices=sorted(SIDES), default="speculate")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    servers, urls = [], {}
    try:
        sides = SIDES[a.compare]
        first, second = sides
        for mode, flags in sides.items():
            port = bench_serve.free_port()
            servers.append(bench_serve.start_server(a.run.resolve(), port, 32, 3.0, extra=flags))
            urls[mode] = f"http://127.0.0.1:{port}"
        got = {(m, kind): [] for m in urls for kind in ("seq", "conc")}
        for r in range(a.rounds):
            order = [first, second] if r % 2 == 0 else [second, first]
            for kind, n, clients in (("seq", a.sequential, 1), ("conc", a.concurrent, a.clients)):
                for mode in order:
                    got[mode, kind].append(asyncio.run(bench_serve.measure(urls[mode], n, clients, True, 0)))
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(30)
    print(f"{a.rounds} rounds, {a.sequential} sequential + {a.concurrent} concurrent ({a.clients} clients) requests "
          f"per side and round, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    rps = {}
    for mode in urls:
        for kind in ("seq", "conc"):
            runs = got[mode, kind]
            rps[mode, kind] = sum(x["requests"] for x in runs) / sum(x["wall_s"] for x in runs)
        p50 = sorted(x["p50_ms"] for x in got[mode, "conc"])[len(got[mode, "conc"]) // 2]
        errors = sum(x["errors"] for k in ("seq", "conc") for x in got[mode, k])
        print(f"{a.compare} {mode:8s}: sequential {rps[mode, 'seq']:.2f} req/s, {a.clients} clients "
              f"{rps[mode, 'conc']:.2f} req/s ({rps[mode, 'conc'] / rps[mode, 'seq']:.2f}x sequential), "
              f"concurrent p50 {p50:.0f} ms, {errors} errors")
    print(f"{first} / {second}: sequential {rps[first, 'seq'] / rps[second, 'seq']:.2f}x, "
          f"concurrent {rps[first, 'conc'] / rps[second, 'conc']:.2f}x requests/s")
    same = total = 0
    for kind in ("seq", "conc"):
        for x, y in zip(got[first, kind], got[second, kind]):
            common = set(x["answers"]) & set(y["answers"])
            same += sum(x["answers"][i] == y["answers"][i] for i in common)
            total += len(common)
    print(f"answers byte-identical across the servers: {same}/{total}")


if __name__ == "__main__":
    main()
