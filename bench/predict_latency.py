"""One-request latency of the predictor on a trained run, per serving form, measured side by side in one process.

    python bench/predict_latency.py --run runs/tool_picker/latest [--threads 2]

Forms: the PEFT adapter as trained (unmerged), merged into the base (what serving uses), and, on request,
merged + per-channel dynamic int8 linear layers (tried and not shipped). For each:
p50/p95 latency of one `predict` (one input at a time, greedy, constrained) over the gold inputs, forward passes
per request, and gold tool accuracy (so a faster form that answers differently shows it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--task", default="tool_picker")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--limit", type=int, default=56)
    ap.add_argument("--forms", nargs="+", default=["unmerged", "merged"], help="unmerged, merged, int8")
    a = ap.parse_args()
    import torch
    from peft import PeftModel

    from schemabuild.models import adapter_base as _adapter_base, inference_model, load_causal_lm as _load_causal_lm, load_checked
    from schemabuild.predictor import Predictor
    from schemabuild.task import load_jsonl_examples, load_task

    if a.threads:
        torch.set_num_threads(a.threads)
    task = load_task(a.task, ROOT / "tasks")
    rows = load_jsonl_examples(task, ROOT / "evals" / f"{a.task}.jsonl")[: a.limit]
    model_dir = a.run / "model"
    contract, tokenizer = load_checked(task, model_dir)
    print(f"threads {torch.get_num_threads()}, {len(rows)} inputs, run {a.run}")
    for form in a.forms:
        model = PeftModel.from_pretrained(_load_causal_lm(_adapter_base(model_dir, contract), "cpu"), str(model_dir))
        if form == "unmerged":
            model = model.eval()
        else:
            model = inference_model(model, "cpu")
            if form == "int8":  # measured, not shipped: it cost most of the accuracy (see BENCHMARKS.md)
                from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

                names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
                model = quantize_dynamic(model, {n: per_channel_dynamic_qconfig for n in names}, dtype=torch.qint8)
        pred = Predictor(task, model, tokenizer, contract, device="cpu")
        for ex in rows[:3]:  # warm-up
            pred.predict(ex.input, max_tokens=64)
        lat, right, passes = [], 0, []
        for ex in rows:
            t = time.perf_counter()
            p = pred.predict(ex.input, max_tokens=64)
            lat.append((time.perf_counter() - t) * 1000)
            right += p.output is not None and p.output.tool == ex.output.tool
            passes.append(getattr(pred.decoder, "last_forward_passes", None))
        lat.sort()
        print(json.dumps({"form": form, "p50_ms": round(statistics.median(lat), 1),
                          "p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 1), "tool_acc": round(right / len(rows), 3)}),
              flush=True)


if __name__ == "__main__":
    main()
