"""Training throughput: our setup vs TRL SFTTrainer defaults, same tiny model and data, side by side.

    HF_HUB_OFFLINE=1 python bench/train.py                 # ~2-4 minutes on 2 CPU cores
    HF_HUB_OFFLINE=1 python bench/train.py --steps 40 --rows 400

Variants (each in its own subprocess, so peak RSS is its own):
  trl-defaults   SFTTrainer with its defaults on the chat rows (TRL tokenizes; no packing; batch 8; TRL's default
                 activation checkpointing on; bf16 off because it fails on CPU)
  ours           what `schemabuild train` runs for the tiny base: contract-tokenized rows with completion_mask,
                 no checkpointing on CPU, batch 8 (schemabuild.train.sft_config / make_trainer)
  ours+packing   the same with --packing (BFD packing, padding-free)
Figure: non-padding tokens per second (TRL's `num_tokens` / train seconds, warm-up step excluded) and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["trl-defaults", "ours", "ours+packing"]


def make_data(workdir: Path, rows: int) -> tuple[Path, Path]:
    """Offline-synthesized tool_picker rows and the tiny base built from them (shared by every variant)."""
    from schemabuild.synth import SynthConfig, synthesize
    from schemabuild.task import load_task
    from schemabuild.train import build_tiny_base

    task = load_task("tool_picker", ROOT / "tasks")
    run_dir = Path(synthesize(task, SynthConfig(n=rows, seed=0), runs_dir=workdir / "runs"))
    return run_dir, build_tiny_base(task, run_dir)


def run_variant(name: str, run_dir: Path, base: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from schemabuild.runs import read_jsonl
    from schemabuild.task import load_task
    from schemabuild.train import TrainConfig, encode_rows, make_trainer, sft_config

    torch.manual_seed(0)
    task = load_task("tool_picker", ROOT / "tasks")
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True)
    rows = list(read_jsonl(run_dir / "data" / "train.jsonl"))
    out = Path(tempfile.mkdtemp())

    class Clock(TrainerCallback):
        """Time from the end of step 1 (warm-up excluded) to the end of training, and the tokens in between."""

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                self.t0, self.tok0 = time.perf_counter(), trainer._total_train_tokens

        def on_train_end(self, args, state, control, **kw):
            self.seconds, self.tokens = time.perf_counter() - self.t0, trainer._total_train_tokens - self.tok0

    clock = Clock()
    if name == "trl-defaults":
        args = SFTConfig(output_dir=str(out), max_steps=steps, bf16=False, use_cpu=True, report_to=[],
                         save_strategy="no", disable_tqdm=True, logging_steps=10_000)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             callbacks=[clock])
    else:
        cfg = TrainConfig(base="tiny", device="cpu", packing=name == "ours+packing", max_steps=steps,
                          save_steps=10_000, logging_steps=10_000)
        encoded = encode_rows(task, tok, rows)
        max_len = max(len(r["input_ids"]) for r in encoded)
        args = sft_config(cfg, out, lr=1e-3, epochs=1, batch_size=8, max_length=max_len, device="cpu", bf16=False)
        trainer = make_trainer(model, tok, args, encoded, callbacks=[clock])
    trainer.train()
    return {"variant": name, "batch": args.per_device_train_batch_size, "steps": steps,
            "checkpointing": bool(args.activation_checkpointing), "tokens": clock.tokens,
            "seconds": round(clock.seconds, 2), "tok_per_s": round(clock.tokens / clock.seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:  # child process: one variant, JSON on the last line
        print(json.dumps(run_variant(a.variant, a.run_dir, a.base, a.steps)))
        return
    import torch

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    run_dir, base = make_data(work, a.rows)
    results = []
    for name in VARIANTS:
        done = subprocess.run([sys.executable, __file__, "--variant", name, "--run-dir", str(run_dir), "--base", str(base),
                               "--steps", str(a.steps)], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    ref = results[0]
    print(f"\ntool_picker tiny base, {a.rows} offline rows, {a.steps} steps per variant, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f})")
    print(f"{'variant':<14}{'batch':>6}{'ckpt':>6}{'tokens/s':>11}{'vs TRL':>8}{'peak RSS MB':>13}{'vs TRL':>8}")
    for r in results:
        print(f"{r['variant']:<14}{r['batch']:>6}{'on' if r['checkpointing'] else 'off':>6}{r['tok_per_s']:>11.0f}"
              f"{r['tok_per_s'] / ref['tok_per_s']:>7.2f}x{r['peak_rss_mb']:>13.0f}{r['peak_rss_mb'] / ref['peak_rss_mb']:>7.2f}x")
    best = max(results[1:], key=lambda r: r["tok_per_s"])
    ratio = best["tok_per_s"] / ref["tok_per_s"]
    print(f"goal ours >= 1.5x TRL defaults: {'met' if ratio >= 1.5 else 'missed'} ({best['variant']} {ratio:.2f}x)")


if __name__ == "__main__":
    main()
