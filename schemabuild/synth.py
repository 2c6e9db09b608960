"""Synthesize a validated training set: setup → teacher → checks → save (owned by the synthesis work)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SynthConfig:
    """Settings of `schemabuild synth` (each field is a CLI flag)."""

    n: int = 1000
    """How many training pairs to aim for."""
    seed: int = 0
    """Random seed for input generation and the train/val split."""


def synthesize(task, cfg: SynthConfig, runs_dir=None):
    raise NotImplementedError("synthesis is being written")
