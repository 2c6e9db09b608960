"""The README's main job, timed: `schemabuild train <task>` in a fresh runs folder (synth → train → eval), then the
same model scored on the dev and holdout sets (scores only), and the training curve; plus a side-by-side probe of
bf16 autocast against fp32 on this CPU (what `--precision auto` decides from the CPU flags).

    HF_HUB_OFFLINE=1 python bench/main_job.py                      # ~10 min on 2 idle cores
    HF_HUB_OFFLINE=1 python bench/main_job.py --summarize RUN_DIR   # the curve and scores of a run already trained
    HF_HUB_OFFLINE=1 python bench/main_job.py --precision-only

The base conversion is cached (~/.cache/schemabuild); a fresh clone adds pip install (~2 min) and the conversion
(~45 s) to the wall time printed here. On a shared machine the wall time is only meaningful with its load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def precision_probe(reps: int = 5) -> dict:
    """ms per LoRA-sized fp32 matmul (a batch of 8 x 64 tokens through a 576 x 1536 layer, forward and backward) with
    and without bf16 autocast, interleaved."""
    import torch

    x = torch.randn(512, 576, requires_grad=True)
    w = torch.randn(1536, 576, requires_grad=True)
    times = {"fp32": [], "bf16-autocast": []}
    for _ in range(reps):
        for name in times:
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "fp32"):
                (x @ w.T).float().sum().backward()
            times[name].append((time.perf_counter() - t0) * 1000)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    from schemabuild.train.fit import train_precision
    from schemabuild.train.settings import TrainConfig

    return {"ms_median": {k: round(v, 3) for k, v in med.items()}, "bf16_over_fp32": round(med["bf16-autocast"] / med["fp32"], 2),
            "auto_chooses": train_precision(TrainConfig(), "cpu")}


def servable_checkpoint(run: Path, checkpoint: str) -> str:
    """A Trainer checkpoint of a run that was stopped before saving, as a run folder `eval` can load
    (<run>/<checkpoint>/model: the adapter, tokenizer and the contract training would have written)."""
    import shutil

    from transformers import AutoTokenizer

    from schemabuild.contract import build_contract, save_contract
    from schemabuild.task import load_task

    src, dest = run / "checkpoints" / checkpoint, run / checkpoint / "model"
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name.startswith(("adapter_", "tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(f, dest / f.name)
    shutil.copy2(run / "model" / "train_log.jsonl", dest / "train_log.jsonl")
    base = json.loads((run / "train_config.json").read_text())["base"]
    task = load_task("tool_picker", ROOT / "tasks")
    save_contract(build_contract(task, AutoTokenizer.from_pretrained(dest), base_model=base["name"], adapter=True,
                                 lora_r=16, base_path=base["where"], base_source=base["source"],
                                 base_sha256=base["sha256"], training="lora"), dest)
    return checkpoint


def summarize(run: Path, model: str = "model") -> dict:
    """The run's curve (train_summary.json, or train_log.jsonl of a run stopped before saving) and its scores on the
    gold, dev and holdout sets (`model`: the folder scored, e.g. a checkpoint made servable)."""
    summary = run / "model" / "train_summary.json"
    s = json.loads(summary.read_text()) if summary.is_file() else {}
    log = [json.loads(x) for x in (run / "model" / "train_log.jsonl").read_text().splitlines()]
    points = s.get("curve") or [e["val"] for e in log if "val" in e]
    out = {"steps": s.get("global_step"), "train_s": s.get("seconds"), "seconds_per_step": s.get("seconds_per_step"),
           "length": s.get("length"), "best_step": s.get("best_step"), "stopped": s.get("stopped"),
           "loss": [(e["step"], round(e["loss"], 4)) for e in log if "loss" in e],
           "curve": [{"step": p["step"], "loss": p["loss"], **p["val_fields"], "exact": p["val_exact"],
                      "measure_s": p["seconds"]} for p in points]}
    keys = {"tool": "field.tool", "query_f1": "field.query.token_f1", "null_recall": "field.query.null_recall",
            "schema_valid": "schema_valid"}
    scored = run if model == "model" else run / model
    for name, data in (("gold", None), ("dev", "dev"), ("holdout", "holdout")):
        folder = scored / ("eval" if data is None else f"eval_{data}")
        if not (folder / "report.json").is_file():
            where = ["--data", str(ROOT / "evals" / data / "tool_picker.jsonl")] if data else []
            subprocess.run([sys.executable, "-m", "schemabuild.cli", "eval", "tool_picker", "--run", str(scored),
                            *where, "--out", str(folder)], check=True, capture_output=True, cwd=ROOT)
        if (folder / "report.json").is_file():
            m = json.loads((folder / "report.json").read_text())["metrics"]
            out[name] = {k: m.get(v) for k, v in keys.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="tool_picker")
    ap.add_argument("--summarize", type=Path, help="a trained run: print its curve and scores, train nothing")
    ap.add_argument("--model", default="model", help="with --summarize: a run folder inside the run to score instead "
                    "(e.g. a checkpoint made servable: <run>/ck/model)")
    ap.add_argument("--checkpoint", help="with --summarize: score this Trainer checkpoint (a run stopped by hand)")
    ap.add_argument("--precision-only", action="store_true")
    a = ap.parse_args()
    if a.precision_only or not a.summarize:
        print(json.dumps({"precision": precision_probe()}), flush=True)
    if a.precision_only:
        return
    if a.summarize:
        model = servable_checkpoint(a.summarize, a.checkpoint) if a.checkpoint else a.model
        print(json.dumps(summarize(a.summarize, model), indent=1))
        return
    runs = Path(tempfile.mkdtemp(prefix="main_job_")) / "runs"
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "schemabuild.cli", "train", a.task, "--runs-dir", str(runs)], check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    run = (runs / a.task / "latest").resolve()
    print(json.dumps({"wall_s": round(wall, 1), "load_before": load, "load_after": os.getloadavg()[0],
                      **summarize(run)}, indent=1))


if __name__ == "__main__":
    main()
