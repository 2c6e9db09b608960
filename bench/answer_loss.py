"""The answer-only loss against TRL's own, side by side on the real base: seconds per forward+backward, same batches.

    HF_HUB_OFFLINE=1 python bench/answer_loss.py                  # ~3 min on 2 CPU cores
    HF_HUB_OFFLINE=1 python bench/answer_loss.py --task meeting_invite --batches 6

What `schemabuild train` builds (SmolLM2-135M from the registry, LoRA r=16 on all linear layers, dropout 0.05,
batch 8, the task's offline rows tokenized by the contract), one trainer; each batch runs TRL's SFTTrainer loss and
ours (`schemabuild.train.answer_loss`) in turn, in alternating order, with no optimizer step, so both see the same
weights and inputs (timed with dropout on, as training runs). Prints the median seconds of each, their ratio, and
the largest difference of the two losses on the same batch with dropout off.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="tool_picker")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--rows", type=int, default=200, help="offline rows synthesized for the batches")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from schemabuild.synth import SynthConfig, synthesize
    from schemabuild.task import load_task
    from schemabuild.train import TrainConfig, load_split, make_trainer, resolve_base, sft_config
    from schemabuild.train.fit import lora_config

    task = load_task(a.task, ROOT / "tasks")
    work = Path(tempfile.mkdtemp(prefix="answer_loss_"))
    run_dir = Path(synthesize(task, SynthConfig(n=a.rows, seed=0), runs_dir=work / "runs"))
    base = resolve_base("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(base.where)
    rows, stats = load_split(task, tok, run_dir, "train", None)
    model = AutoModelForCausalLM.from_pretrained(base.where, dtype=torch.float32)
    cfg = TrainConfig(device="cpu")
    args = sft_config(cfg, work / "ckpt", lr=1e-3, epochs=1, batch_size=8, max_length=stats["longest"], device="cpu",
                      bf16=False)
    trainer = make_trainer(model, tok, args, rows, lora_config(model, cfg, 16, 32))
    peft_model = trainer.model
    peft_model.train()
    trl_loss = type(trainer).__mro__[1].compute_loss  # TRL's SFTTrainer, the class ours derives from

    def timed(fn, batch) -> tuple[float, float]:
        peft_model.zero_grad()
        start = time.perf_counter()
        loss = fn(batch)
        loss.backward()
        return time.perf_counter() - start, loss.item()

    sides = {"trl": lambda b: trl_loss(trainer, peft_model, dict(b)),
             "answer-only": lambda b: trainer.compute_loss(peft_model, dict(b))}
    times: dict[str, list[float]] = {k: [] for k in sides}
    diffs, labelled, tokens = [], 0, 0
    for i, batch in enumerate(trainer.get_train_dataloader()):
        if i > a.batches:
            break
        peft_model.eval()  # no dropout: the two losses must agree
        with torch.no_grad():
            diffs.append(abs(sides["trl"](batch).item() - sides["answer-only"](batch).item()))
        peft_model.train()  # timed as training runs (LoRA dropout on)
        for name in (list(sides) if i % 2 == 0 else list(reversed(sides))):
            seconds, _ = timed(sides[name], batch)
            if i:  # the first batch warms up
                times[name].append(seconds)
        labelled += int((batch["labels"][:, 1:] != -100).sum())
        tokens += int(batch["attention_mask"].sum())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"task": a.task, "batches": len(times["trl"]), "batch_size": 8,
                      "labelled_share": round(labelled / max(1, tokens), 3), "load_avg": round(os.getloadavg()[0], 2),
                      "seconds_median": {k: round(v, 3) for k, v in med.items()},
                      "speedup": round(med["trl"] / med["answer-only"], 2),
                      "largest_loss_difference": max(diffs)}, indent=1))


if __name__ == "__main__":
    main()
