"""What the student prompt saves: tokens per row, LoRA step time and one-request latency, full vs student prompt.

    python bench/student_prompt.py [--base smollm2-135m] [--steps 3]

Side by side in one process on the same rows (the gold inputs with their targets): the task's full instructions
as the system message (what the teacher and un-tuned bases get) against the contract's short student prompt
(what fine-tuned models are trained and served with). Steps alternate between the two so load drifts hit both.
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
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--task", default="tool_picker")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--requests", type=int, default=8)
    a = ap.parse_args()
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from schemabuild.contract import build_contract, canonical_json, encode_example, student_prompt
    from schemabuild.predictor import Predictor
    from schemabuild.task import load_jsonl_examples, load_task
    from schemabuild.train import TrainConfig, resolve_base
    from schemabuild.train.fit import lora_config

    task = load_task(a.task, ROOT / "tasks")
    rows = load_jsonl_examples(task, ROOT / "evals" / f"{a.task}.jsonl")
    base = resolve_base(a.base)
    tok = AutoTokenizer.from_pretrained(base.where)
    systems = {"full": task.instructions, "student": student_prompt(task)}
    encoded = {k: [encode_example(tok, s, ex.input, canonical_json(ex.output)) for ex in rows] for k, s in systems.items()}
    mean_len = {k: statistics.mean(len(r["input_ids"]) for r in v) for k, v in encoded.items()}
    print(json.dumps({"threads": torch.get_num_threads(), "tokens_per_row": {k: round(v, 1) for k, v in mean_len.items()}}))

    model = AutoModelForCausalLM.from_pretrained(base.where, dtype=torch.float32)
    model = get_peft_model(model, lora_config(model, TrainConfig(), 16, 32)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def batch(kind: str):
        items = encoded[kind][:8]
        width = max(len(r["input_ids"]) for r in items)
        ids = torch.full((8, width), tok.pad_token_id)
        labels = torch.full((8, width), -100)
        mask = torch.zeros((8, width), dtype=torch.long)
        for i, r in enumerate(items):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            mask[i, :n] = 1
            labels[i, :n] = torch.tensor([t if m else -100 for t, m in zip(r["input_ids"], r["completion_mask"])])
        return ids, mask, labels

    times = {"full": [], "student": []}
    for step in range(a.steps + 1):
        for kind in ("full", "student"):
            ids, mask, labels = batch(kind)
            t = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
            if step:  # the first step of each warms up
                times[kind].append(time.perf_counter() - t)
    step_s = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"train_step_s_batch8": {k: round(v, 3) for k, v in step_s.items()},
                      "speedup": round(step_s["full"] / step_s["student"], 2)}))

    model = model.merge_and_unload().eval()
    lat = {}
    for kind in ("full", "student"):
        contract = build_contract(task, tok, base_model=base.name, prompt=kind)
        pred = Predictor(task, model, tok, contract, device="cpu")
        pred.predict(rows[0].input, max_tokens=48)
        samples = []
        for ex in rows[: a.requests]:
            t = time.perf_counter()
            pred.predict(ex.input, max_tokens=48)
            samples.append((time.perf_counter() - t) * 1000)
        lat[kind] = statistics.median(samples)
    print(json.dumps({"predict_p50_ms_untuned_adapter": {k: round(v, 1) for k, v in lat.items()},
                      "speedup": round(lat["full"] / lat["student"], 2)}))


if __name__ == "__main__":
    main()
