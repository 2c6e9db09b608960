"""Eval gates for CI: `pytest evals/` scores the task's trained model on its gold set (evals/<task>.jsonl).

The model is the latest run under ./runs (or $SCHEMABUILD_RUNS) when it is fresh for the task file as it is
now; otherwise one is trained first with `schemabuild train`'s defaults (offline: the embedded tiny model on
recombined examples). Cache ./runs between CI jobs to skip that training.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tasks"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EVAL_TRAIN_N = int(os.environ.get("SCHEMABUILD_EVAL_N", "400"))
"""Training pairs synthesized when a run has to be trained for the gate (kept small for CI time)."""


@pytest.fixture(scope="session")
def tool_picker_run() -> Path:
    """The tool_picker run the gate scores: the fresh latest one, or a newly trained one."""
    from schemabuild.evaluate import ensure_run
    from schemabuild.task import load_task

    return ensure_run(load_task("tool_picker", TASKS), n=EVAL_TRAIN_N)
