"""Eval speed, measured side by side: scoring is noise next to decoding, and batching the decode pays.

    HF_HUB_OFFLINE=1 python bench/eval.py            # uses (or trains) the latest fresh tool_picker run in ./runs

Prints, on the gold set (evals/tool_picker.jsonl):
- decode wall time at batch size 1 and 16, and their ratio;
- scoring time (field comparators, confusion, diffs) per row, and its share of the whole eval;
- report writing time (json, md, html with SVG).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from schemabuild.evaluate import check_gate, load_rows, score, write_reports
    from schemabuild.pipeline import ensure_run
    from schemabuild.runs import gold_file
    from schemabuild.predictor import Predictor
    from schemabuild.task import load_task

    task = load_task("tool_picker", ROOT / "tasks")
    run_dir = ensure_run(task, n=int(os.environ.get("SCHEMABUILD_EVAL_N", "400")))
    examples = load_rows(task, gold_file(task))
    texts = [ex.input for ex in examples]
    predictor = Predictor.from_run(task, run=str(run_dir))
    predictor.predict_many(texts[:4], batch_size=4, progress=False)  # warm-up (grammar compile, first forward)

    timings = {}
    for bs in (1, 16):
        start = time.perf_counter()
        preds = predictor.predict_many(texts, batch_size=bs, progress=False)
        timings[bs] = time.perf_counter() - start
    start = time.perf_counter()
    reps = 20
    for _ in range(reps):
        section = score(task, examples, preds)
    t_score = (time.perf_counter() - start) / reps
    report = {"task": task.name, "run": str(run_dir), "data": "gold", "n": len(examples), "created": "bench",
              "metrics": section["metrics"], "models": {"finetuned": section}, "notes": [], "out": "",
              "gate": {"passed": True, "failures": check_gate(section["metrics"], {}), "min": {}, "baseline": None,
                       "tolerance": 0.02}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_reports(report, Path(tmp))
    t_write = time.perf_counter() - start

    n = len(examples)
    print(f"run {run_dir}, {n} gold rows, field.tool {section['metrics']['field.tool']:.3f}")
    print(f"decode batch 1:   {timings[1]:7.2f} s  ({timings[1] / n * 1000:6.1f} ms/row)")
    print(f"decode batch 16:  {timings[16]:7.2f} s  ({timings[16] / n * 1000:6.1f} ms/row)")
    print(f"batch 16 vs 1:    {timings[1] / timings[16]:7.2f}x faster")
    print(f"scoring:          {t_score * 1000:7.2f} ms  ({t_score / n * 1e6:6.1f} us/row, "
          f"{t_score / (t_score + timings[16]) * 100:.2f}% of an eval at batch 16)")
    print(f"writing reports:  {t_write * 1000:7.2f} ms")


if __name__ == "__main__":
    main()
