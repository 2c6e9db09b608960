"""Teacher labelling throughput against the fake OpenAI server with a fixed latency.

    HF_HUB_OFFLINE=1 python bench/synth.py            # 500 inputs, 50 ms latency, concurrency 32

Prints wall time / ideal, where ideal = n × latency / concurrency (goal ≤ 1.2), a concurrency-1 run for the
per-call overhead, and the cached rerun (no HTTP calls). The server runs in its own process so it does not
share the client's interpreter lock.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def label_run(task, inputs: list[str], concurrency: int, cache_file: Path) -> tuple[float, dict]:
    from schemabuild.synth.cache import TeacherCache
    from schemabuild.synth import SynthConfig
    from schemabuild.synth.api import OpenAITeacher

    teacher = OpenAITeacher(SynthConfig(concurrency=concurrency), TeacherCache(cache_file))
    start, cpu = time.perf_counter(), time.process_time()
    rows = asyncio.run(teacher.label(task, inputs))
    wall = time.perf_counter() - start
    assert all(r.raw is not None for r in rows), [r.error for r in rows if r.error][:3]
    return wall, {**teacher.ledger(), "cpu_ms_per_call": 1000 * (time.process_time() - cpu) / len(inputs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    import openai  # noqa: F401  (import time is not labelling time)

    from schemabuild.task import load_task

    task = load_task("tool_picker", ROOT / "tasks")
    server = subprocess.Popen([sys.executable, "-m", "tests.fake_openai", "--latency", str(args.latency)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip().split("=", 1)[1]
        os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"] = url, "bench"
        os.environ.setdefault("TQDM_DISABLE", "1")
        with tempfile.TemporaryDirectory() as tmp:
            inputs = [f"bench input {i}: play something by artist {i}" for i in range(args.n)]
            wall, ledger = label_run(task, inputs, args.concurrency, Path(tmp) / "a.sqlite")
            ideal = args.n * args.latency / args.concurrency
            n1 = 40
            wall1, _ = label_run(task, [f"serial {i}" for i in range(n1)], 1, Path(tmp) / "b.sqlite")
            cached, ledger2 = label_run(task, inputs, args.concurrency, Path(tmp) / "a.sqlite")
    finally:
        server.terminate()
        server.wait()

    print(f"label {args.n} inputs, latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}   "
          f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")
    print(f"  wall {wall:.2f} s   ideal {ideal:.2f} s   wall/ideal {wall / ideal:.2f}   (goal <= 1.2: "
          f"{'met' if wall / ideal <= 1.2 else 'missed'})   HTTP calls {ledger['calls']}")
    print(f"  client CPU {ledger['cpu_ms_per_call']:.2f} ms/call: {args.n} calls need >= "
          f"{args.n * ledger['cpu_ms_per_call'] / 1000:.2f} s of one core (openai client + cache + ledger)")
    print(f"  concurrency 1, {n1} inputs: wall {wall1:.2f} s   ideal {n1 * args.latency:.2f} s   "
          f"wall/ideal {wall1 / (n1 * args.latency):.2f}   overhead {1000 * (wall1 / n1 - args.latency):.1f} ms/call")
    print(f"  cached rerun: wall {cached:.2f} s   HTTP calls {ledger2['calls']}   cached {ledger2['cached_calls']}")


if __name__ == "__main__":
    main()
