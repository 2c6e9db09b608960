"""Settings of `schemabuild train`: one dataclass (each field a CLI flag) and the defaults measured per kind of base."""

from __future__ import annotations

import dataclasses

from schemabuild.errors import ConfigError

MAX_LORA_RANK = 64  # vLLM's --max-lora-rank ceiling
# Tiny bases have random weights: they are trained fully, with their own defaults, tuned on tool_picker (offline
# synth n=1000, 2 CPU cores; see BENCHMARKS.md "Training"): more, smaller steps at 1e-3 beat 2e-3 at batch 16.
# 8 epochs since the offline teacher fills slots with invented words: on its data 8 epochs matched 12 on gold tool
# accuracy (0.84-0.91 vs 0.82-0.93, seeds 0-2) and never left an output unfinished (12 did on one seed).
TINY_DEFAULTS = {"lr": 1e-3, "epochs": 8.0, "batch_size": 8}
# LoRA on a pretrained base (SmolLM2-135M on 2 CPU cores; see BENCHMARKS.md "Real base"): r=8 at 2e-4 was far from
# converged after two epochs, r=16 at 1e-3 reached loss 0.06 within one.
# All layers: at the same steps, LoRA on the top half only was 1.19x faster per step on CPU but scored lower
# (dev tool 0.875 vs 0.94, query token-F1 0.78 vs 0.87), so the default adapts them all.
LORA_DEFAULTS = {"lr": 1e-3, "epochs": 1.0, "batch_size": 8, "lora_r": 16, "layers_fraction": 1.0}
# How long the default trains (no --epochs): until the task's own per-field accuracy on the validation split stops
# improving, measured with constrained decoding through the contract every `val_every` of an epoch on the first
# `val_rows` rows of data/val.jsonl; the best adapter is kept; it stops `patience` evaluations after the last gain
# (or at once when every field is right), never before `min_epochs` nor after `max_epochs` (the learning-rate schedule
# is planned over max_epochs). Measured (BENCHMARKS.md "Training length by measurement", bench/main_job.py):
# tool_picker, 800 offline rows, SmolLM2-135M LoRA, schedule over 3 epochs: validation tool / query / exact
# 0.56 / 0.67 / 0.48 at a quarter epoch, 0.96 / 0.88 / 0.88 at half an epoch, still rising after; so no stop before
# half an epoch. The maximum is 3 epochs on CPU as on a GPU (the order task: 3 epochs scored 1.000 exact where
# 1 epoch scored 0.867). It was 1 epoch on CPU to fit the 10-minute main job, until the perfect-teacher run of
# meeting_invite (bench/second_task.py truth, 800 rows, BENCHMARKS.md "Session 5") measured validation exact 0.17 /
# 0.54 / 0.63 at 0.5 / 0.75 / 1 epoch and still rising: one epoch leaves a harder task far from its teacher, and
# the stop rule ends an easy task soon after it converges. Each measurement of 48 rows costs ~4-8 steps.
# The tiny base (random weights, trained fully): 8 epochs matched 12 on gold (above), so 4-8.
# Cool-down (a fraction of an epoch): the schedule is planned over max_epochs, so a run the stop rule ends early
# stopped at a third or more of the peak learning rate (cosine at 1.75 of 3 epochs: 0.35x), its weights never annealed.
# When the rule stops a run, the learning rate now falls linearly to 0 over this many more steps, and the annealed
# weights are measured and kept unless the best measured beats them by a gain (BENCHMARKS.md "Session 7").
LENGTH_DEFAULTS = {
    "lora": {"min_epochs": 0.5, "max_epochs": {"cpu": 3.0, "cuda": 3.0}, "val_every": 0.25, "patience": 2,
             "cooldown": 0.25},
    "tiny": {"min_epochs": 4.0, "max_epochs": {"cpu": 8.0, "cuda": 8.0}, "val_every": 1.0, "patience": 2,
             "cooldown": 0.0},
}
GAIN_ANSWERS = 2
"""A measurement is a gain (new best weights, patience reset) when at least this many more validation answers are
right than at the best so far, counted over rows x fields: one answer flipping between measurements is noise."""
VAL_ROWS = 48
"""Validation rows decoded at each measurement (the first of data/val.jsonl): ~1-2 s per row-batch on 2 CPU cores."""
# A near-byte-level tokenizer for the tiny base: every word, seen in training or not, is made of pieces the model
# was trained on, so it learns to copy and to read unseen words (gold tool accuracy 0.66 at 512, 0.82-0.91 at 384).
TINY_VOCAB = 384


@dataclasses.dataclass
class TrainConfig:
    """Settings of `schemabuild train` (each field is a CLI flag)."""

    base: str = "auto"
    """Base model: `auto` (Qwen2.5-0.5B-Instruct when it can be had, else SmolLM2-135M-Instruct from the package
    registry, else tiny), a registry name (smollm2-135m), a hub id, a model folder, a .gguf file, or `tiny`."""
    epochs: float | None = None
    """Training epochs, a fixed length [default: measured: until per-field validation accuracy stops improving,
    within --min-epochs/--max-epochs]."""
    min_epochs: float | None = None
    """Measured length: never stop before this many epochs [default: 0.5 with LoRA, 4 for the tiny base]."""
    max_epochs: float | None = None
    """Measured length: never train longer (the schedule is planned over it) [default: LoRA 3;
    8 for the tiny base]."""
    val_every: int | None = None
    """Measured length: optimizer steps between validation measurements [default: a quarter epoch with LoRA, one
    epoch for the tiny base]."""
    val_rows: int = VAL_ROWS
    """Measured length: validation rows decoded per measurement (the first of data/val.jsonl)."""
    patience: int | None = None
    """Measured length: stop after this many measurements without a gain [default: 2]."""
    cooldown: int | None = None
    """Measured length: once the stop rule fires, steps over which the learning rate falls to 0 before the last
    measurement (0 = stop at once) [default: a quarter epoch with LoRA, 0 for the tiny base]."""
    precision: str = "auto"
    """auto (bf16 on a CUDA GPU that has it, bf16 autocast on a CPU with avx512_bf16/amx_bf16, else fp32), fp32 or
    bf16."""
    lr: float | None = None
    """Peak learning rate [default: 1e-3, LoRA and the tiny base's full training alike]."""
    lora_r: int | None = None
    """LoRA rank, at most 64 (vLLM's limit) [default: 16]."""
    lora_alpha: int | None = None
    """LoRA alpha (scaling = alpha / r) [default: 2 x rank]."""
    lora_dropout: float = 0.05
    """LoRA dropout."""
    lora_targets: str = "all-linear"
    """Modules LoRA adapts: `all-linear` or a comma-separated list of module names."""
    lora_layers: int | None = None
    """Adapt only the top N transformer layers (0 = all): backward stops there, so CPU steps are cheaper
    [default: all]."""
    batch_size: int | None = None
    """Sequences per device per step [default: 8]."""
    grad_accum: int = 1
    """Gradient accumulation steps."""
    max_length: int | None = None
    """Longest example in tokens; longer ones are counted and dropped with a warning [default: the longest in the data]."""
    warmup_ratio: float = 0.05
    """Fraction of steps spent warming the learning rate up."""
    scheduler: str = "cosine"
    """Learning-rate schedule (a transformers scheduler name: cosine, linear, constant, ...)."""
    seed: int = 0
    """Random seed (weights init of the tiny base, shuffling, dropout; also passed to synthesis)."""
    group_by_length: bool = False
    """Batch rows of similar length together: less padding, 1.27x faster training on tool_picker (same seed, side by
    side), but over seeds 0-2 it missed 5 null queries of 45 against 1 for random batches (BENCHMARKS.md), so off."""
    packing: bool = False
    """Pack examples into --max-length blocks (padding-free). Off by default: measured slower on CPU (bench/train.py)."""
    gradient_checkpointing: bool = True
    """Trade compute for memory on GPU (ignored on CPU)."""
    qlora: bool = False
    """Load the base in 4 bits (needs CUDA and bitsandbytes)."""
    trust_remote_code: bool = False
    """Allow a hub model's own Python code to run (off: only architectures transformers knows)."""
    report_to: str = "none"
    """Experiment tracking: none, tensorboard or wandb (passed to the Trainer)."""
    resume: bool = False
    """Continue the latest run (or --run) from its last checkpoint."""
    device: str = "auto"
    """auto (CUDA when available), cuda or cpu."""
    save_steps: int = 50
    """Write a checkpoint every this many optimizer steps (what --resume continues from)."""
    logging_steps: int = 10
    """Print and log the loss every this many steps."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1 = run all epochs)."""

    def __post_init__(self) -> None:
        if not str(self.base).strip():
            raise ConfigError("--base: give a hub id, a local path, `tiny` or `auto`")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"--epochs: must be > 0, got {self.epochs}")
        for name in ("min_epochs", "max_epochs"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be > 0, got {getattr(self, name)}")
        if self.min_epochs is not None and self.max_epochs is not None and self.min_epochs > self.max_epochs:
            raise ConfigError(f"--min-epochs {self.min_epochs} is above --max-epochs {self.max_epochs}")
        if self.epochs is not None and (self.min_epochs is not None or self.max_epochs is not None):
            raise ConfigError("--epochs fixes the length: drop --min-epochs/--max-epochs, or drop --epochs to measure it")
        if self.cooldown is not None and self.cooldown < 0:
            raise ConfigError(f"--cooldown: must be >= 0 (0 = stop at once), got {self.cooldown}")
        if self.val_rows < 1:
            raise ConfigError(f"--val-rows: must be >= 1, got {self.val_rows}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"--precision: one of auto, fp32, bf16; got {self.precision!r}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise ConfigError(f"--lr: must be in (0, 1), got {self.lr}")
        if self.lora_r is not None and not 1 <= self.lora_r <= MAX_LORA_RANK:
            raise ConfigError(f"--lora-r: must be between 1 and {MAX_LORA_RANK} (vLLM's --max-lora-rank limit), got {self.lora_r}")
        if self.lora_alpha is not None and self.lora_alpha < 1:
            raise ConfigError(f"--lora-alpha: must be >= 1, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"--lora-dropout: must be in [0, 1), got {self.lora_dropout}")
        if self.lora_layers is not None and self.lora_layers < 0:
            raise ConfigError(f"--lora-layers: must be >= 0 (0 = all layers), got {self.lora_layers}")
        if not self.lora_targets.strip():
            raise ConfigError("--lora-targets: give `all-linear` or module names such as q_proj,v_proj")
        for name in ("batch_size", "grad_accum", "save_steps", "logging_steps", "val_every", "patience"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError(f"--max-length: must be >= 8 tokens, got {self.max_length}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio: must be in [0, 1), got {self.warmup_ratio}")
        schedulers = {"linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                      "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay"}
        if self.scheduler not in schedulers:
            raise ConfigError(f"--scheduler: unknown schedule {self.scheduler!r} (one of {', '.join(sorted(schedulers))})")
        if self.report_to not in ("none", "tensorboard", "wandb"):
            raise ConfigError(f"--report-to: one of none, tensorboard, wandb; got {self.report_to!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device: one of auto, cpu, cuda; got {self.device!r}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"--max-steps: -1 (all epochs) or >= 1, got {self.max_steps}")

