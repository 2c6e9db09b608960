"""Fine-tune: load base → render contract → TRL SFTTrainer + PEFT LoRA → save (owned by the training work)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class TrainConfig:
    """Settings of `schemabuild train` (each field is a CLI flag)."""

    base: str = "auto"
    """Base model: a hub id, a local path, `tiny`, or `auto`."""
    epochs: float = 3.0
    """Training epochs."""


def train_task(task, cfg: TrainConfig, runs_dir=None):
    raise NotImplementedError("training is being written")
