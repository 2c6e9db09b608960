"""Settings sweep for LoRA on the real registry base: setting → wall time → gold and dev-set quality, per seed.

    python bench/real_base.py --setting default --seeds 0 1 2
    python bench/real_base.py --setting top15 --seeds 0 --extra "--lora-layers 15"

Each (setting, seed) synthesizes with the offline teacher (`--n`, the seed), trains through the real CLI
(`schemabuild train ... --base smollm2-135m`), then scores on evals/<task>.jsonl, evals/dev/<task>.jsonl and
evals/holdout/<task>.jsonl (scores only: the sets are never printed). The row also carries how the length was
decided (measured or fixed), the steps, seconds per step, and the validation curve.
One JSON line per result goes to --out (appended), so a sweep can be stopped and continued.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(args: list[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {shlex.join(args)}\n{done.stderr[-2000:]}")
    return done.stdout


def metrics(report: Path) -> dict:
    m = json.loads(report.read_text())["models"]["finetuned"]["metrics"]
    keys = {"tool": "field.tool", "query_f1": "field.query.token_f1", "null_recall": "field.query.null_recall",
            "json_valid": "json_valid", "schema_valid": "schema_valid"}
    return {k: m.get(v) for k, v in keys.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="tool_picker")
    ap.add_argument("--setting", required=True, help="a name for the row")
    ap.add_argument("--extra", default="", help="extra `schemabuild train` flags")
    ap.add_argument("--n", type=int, default=None, help="rows to synthesize [default: train's default]")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--runs-dir", type=Path, default=Path("/tmp/real_base_runs"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/real_base.jsonl"))
    a = ap.parse_args()
    sb = [sys.executable, "-m", "schemabuild.cli"]
    for seed in a.seeds:
        run_id = f"{a.setting}-s{seed}"
        t0 = time.perf_counter()
        n = ["--n", str(a.n)] if a.n else []
        sh(sb + ["synth", a.task, "--seed", str(seed), "--runs-dir", str(a.runs_dir), "--run", run_id, *n])
        t1 = time.perf_counter()
        sh(sb + ["train", a.task, "--run", str(a.runs_dir / a.task / run_id), "--runs-dir", str(a.runs_dir),
                 "--base", a.base, "--seed", str(seed), "--no-eval", *n, *shlex.split(a.extra)])
        t2 = time.perf_counter()
        run = a.runs_dir / a.task / run_id
        sh(sb + ["eval", a.task, "--run", str(run), "--out", str(run / "eval")])
        for name in ("dev", "holdout"):
            sh(sb + ["eval", a.task, "--run", str(run), "--data", str(ROOT / "evals" / name / f"{a.task}.jsonl"),
                     "--out", str(run / f"eval_{name}")])
        t3 = time.perf_counter()
        summary = json.loads((run / "model" / "train_summary.json").read_text())
        row = {"setting": a.setting, "extra": a.extra, "n": a.n, "seed": seed, "synth_s": round(t1 - t0, 1),
               "train_s": round(t2 - t1, 1), "eval_s": round(t3 - t2, 1), "steps": summary["global_step"],
               "train_loss": round(summary["train_loss"], 4), "gold": metrics(run / "eval" / "report.json"),
               "dev": metrics(run / "eval_dev" / "report.json"), "holdout": metrics(run / "eval_holdout" / "report.json"),
               "length": summary.get("length"), "best_step": summary.get("best_step"),
               "stopped": summary.get("stopped"), "seconds_per_step": summary.get("seconds_per_step"),
               "curve": [(p["step"], p["val_fields"], p["val_exact"]) for p in summary.get("curve", [])]}
        print(json.dumps(row), flush=True)
        with a.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
