"""Evaluate: per-field accuracy from the schema, reports and a CI gate (owned by the evaluation work)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class EvalConfig:
    """Settings of `schemabuild eval` (each field is a CLI flag)."""

    run: str | None = None
    """Run directory or run id [default: the task's latest run]."""


def run_eval(task, cfg: EvalConfig, runs_dir=None) -> int:
    raise NotImplementedError("evaluation is being written")
