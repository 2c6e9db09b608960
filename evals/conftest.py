"""Eval gates for CI: `pytest evals/` scores the task's trained model on its gold set (evals/<task>.jsonl).

The model is the latest run under ./runs (or $SCHEMABUILD_RUNS) when it was made by the training code, settings, data
and task file there are now (its model/fingerprint.json, see schemabuild.runs.training_fingerprint); otherwise one is
trained first with `schemabuild train`'s defaults (offline: LoRA on SmolLM2-135M from the
package registry, on recombined examples). Cache ./runs (and ~/.cache/schemabuild) between CI jobs to skip that.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tasks"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EVAL_TRAIN = {"n": int(os.environ["SCHEMABUILD_EVAL_N"])} if os.environ.get("SCHEMABUILD_EVAL_N") else {}
"""Settings for a run the gate has to train: `schemabuild train`'s own defaults (the README's main command; minutes
on 2 CPU cores, see README), unless SCHEMABUILD_EVAL_N asks for fewer synthesized pairs."""


@pytest.fixture(scope="session")
def tool_picker_run() -> Path:
    """The tool_picker run the gate scores: the fresh latest one, or a newly trained one."""
    from schemabuild.pipeline import ensure_run
    from schemabuild.task import load_task

    return ensure_run(load_task("tool_picker", TASKS), **EVAL_TRAIN)
