"""OpenMP wait policy for CPU training, side by side: seconds per LoRA step of `schemabuild train` on the real base
with OMP_WAIT_POLICY=PASSIVE, ACTIVE, and libgomp's own default (spin a while, then sleep), in ABBA order, optionally
beside a competing CPU-bound process. (`schemabuild train` picks ACTIVE or PASSIVE from the load it sees at start:
`schemabuild.precision.choose_wait_policy`; each arm here sets the variable, so that choice is not made.)

    HF_HUB_OFFLINE=1 python bench/wait_policy.py                    # ~15 min on 2 idle cores
    HF_HUB_OFFLINE=1 python bench/wait_policy.py --load 1 --rounds 1  # beside one busy process

Each arm is a fresh `schemabuild train tool_picker --base smollm2-135m --max-steps N --no-eval` in a runs folder of
its own (same seed, so the same offline data and batches); the figure is the run's own train seconds / steps from
its train_summary.json, so model loading and synthesis are not counted.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {"passive": "PASSIVE", "active": "ACTIVE", "gomp-default": None}


def spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 31 + 7) % 1_000_003


def one_run(policy: str, steps: int, seed: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_WAIT_POLICY", None)
    value = POLICIES[policy]
    # fit.py only sets PASSIVE when the variable is absent; libgomp reads an unknown value as its default
    env["OMP_WAIT_POLICY"] = value if value else "default"
    work = Path(tempfile.mkdtemp(prefix=f"wait_{policy}_"))
    cmd = [sys.executable, "-m", "schemabuild", "train", "tool_picker", "--tasks-dir", str(ROOT / "tasks"),
           "--runs-dir", str(work / "runs"), "--base", "smollm2-135m", "--max-steps", str(steps), "--no-eval",
           "--seed", str(seed), "--save-steps", str(steps + 1)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = json.loads(next((work / "runs" / "tool_picker").glob("*/model/train_summary.json")).read_text())
    return {"policy": policy, "steps": summary["global_step"], "seconds": summary["seconds"],
            "seconds_per_step": round(summary["seconds"] / summary["global_step"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2, help="ABBA rounds: each policy runs twice per round")
    ap.add_argument("--load", type=int, default=0, help="busy pure-Python processes running beside training")
    ap.add_argument("--policies", default="passive,active,gomp-default")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    names = a.policies.split(",")
    stop = multiprocessing.Event()
    hogs = [multiprocessing.Process(target=spin, args=(stop,), daemon=True) for _ in range(a.load)]
    for h in hogs:
        h.start()
    results: dict[str, list[float]] = {n: [] for n in names}
    try:
        for _ in range(a.rounds):
            for name in names + names[::-1]:
                r = one_run(name, a.steps, a.seed)
                results[name].append(r["seconds_per_step"])
                print(json.dumps({**r, "load": a.load}), flush=True)
    finally:
        stop.set()
    med = {n: statistics.median(v) for n, v in results.items()}
    print(json.dumps({"load": a.load, "steps": a.steps, "median_seconds_per_step": med,
                      "over_passive": {n: round(v / med[names[0]], 3) for n, v in med.items()},
                      "load_avg": os.getloadavg()}))


if __name__ == "__main__":
    main()
