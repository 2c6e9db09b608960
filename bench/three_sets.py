"""tool_picker's three eval sets over seeds: the README's main job per seed, scored on gold, dev and holdout.

    HF_HUB_OFFLINE=1 python bench/three_sets.py                  # seeds 0 1 2, fresh runs under a temp folder
    HF_HUB_OFFLINE=1 python bench/three_sets.py --seeds 0 --runs-dir runs   # reuse/train in ./runs
    HF_HUB_OFFLINE=1 python bench/three_sets.py --seeds 0 --arms "" "--cooldown 0"   # two settings, side by side

Each seed runs `schemabuild train tool_picker --seed S` (synth + train with the defaults, offline teacher unless a
teacher is configured) and then `schemabuild eval` on the three sets:
- gold    evals/tool_picker.jsonl         (56 rows; tuned on in earlier sessions)
- dev     evals/dev/tool_picker.jsonl     (64 rows; tuned on in earlier sessions)
- holdout evals/holdout/tool_picker.jsonl (64 rows; written 2026-12-01 before any output was seen; never tuned on)
Prints a table per seed and the mean and worst seed of tool accuracy, query token-F1 and null recall, plus the
wall time of each training. The script only scores: nothing it reads feeds training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = {"gold": ROOT / "evals" / "tool_picker.jsonl", "dev": ROOT / "evals" / "dev" / "tool_picker.jsonl",
        "holdout": ROOT / "evals" / "holdout" / "tool_picker.jsonl"}


def schemabuild(*args: str, runs_dir: Path) -> None:
    cmd = [sys.executable, "-m", "schemabuild", *args, "--tasks-dir", str(ROOT / "tasks"), "--runs-dir", str(runs_dir)]
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def metrics(report: dict) -> dict:
    """tool accuracy, query token-F1 and null recall from an eval report.json."""
    m = report["models"]["finetuned"]["metrics"]
    return {"tool": m["field.tool"], "query_f1": m.get("field.query.token_f1"),
            "null_recall": m.get("field.query.null_recall")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, default=None, help="default: a new temporary folder")
    parser.add_argument("--reuse", action="store_true", help="score the latest run of each runs dir instead of training")
    parser.add_argument("--arms", nargs="+", default=[""],
                        help='`schemabuild train` flags per arm, trained one after the other per seed ("" = defaults)')
    args = parser.parse_args()
    base = args.runs_dir or Path(tempfile.mkdtemp(prefix="three_sets_"))
    for arm_index, arm in enumerate(args.arms):
        table: dict[str, list[dict]] = {name: [] for name in SETS}
        for seed in args.seeds:
            runs_dir = base / f"seed{seed}" if len(args.seeds) > 1 or args.runs_dir is None else base
            runs_dir = runs_dir / f"arm{arm_index}" if len(args.arms) > 1 else runs_dir
            start = time.perf_counter()
            if not args.reuse:
                schemabuild("train", "tool_picker", "--seed", str(seed), "--no-eval", *arm.split(), runs_dir=runs_dir)
            took = time.perf_counter() - start
            run = (runs_dir / "tool_picker" / "latest").resolve()
            for name, data in SETS.items():
                out = run / f"eval_{name}"
                schemabuild("eval", "tool_picker", "--run", str(run), "--data", str(data), "--out", str(out),
                            runs_dir=runs_dir)
                row = metrics(json.loads((out / "report.json").read_text()))
                table[name].append(row)
                print(f"[{arm or 'defaults'}] seed {seed} {name:8s} "
                      + " ".join(f"{k} {v:.3f}" for k, v in row.items() if v is not None), flush=True)
            print(f"[{arm or 'defaults'}] seed {seed}: train (synth + fit) {took:.0f}s, run {run}", flush=True)
        print_table(arm or "defaults", table)


def print_table(arm: str, table: dict[str, list[dict]]) -> None:
    print(f"\n{arm}\n| set | tool mean (worst) | query F1 mean (worst) | null recall mean (worst) |\n|---|---|---|---|")
    for name, rows in table.items():
        cells = []
        for key in ("tool", "query_f1", "null_recall"):
            values = [r[key] for r in rows if r[key] is not None]
            cells.append(f"{statistics.mean(values):.3f} ({min(values):.3f})" if values else "n/a")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
