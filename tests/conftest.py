"""Shared test setup: every test runs offline with its runs/ and cache under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tasks"
EVALS = ROOT / "evals"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch):
    """Runs, the teacher cache and the tasks folder point at tmp_path / the repo's tasks; no teacher key leaks in."""
    monkeypatch.setenv("SCHEMABUILD_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("SCHEMABUILD_TASKS", str(TASKS))
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "SCHEMABUILD_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    yield


@pytest.fixture(scope="session")
def tool_picker():
    from schemabuild.task import load_task

    return load_task("tool_picker", TASKS)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tool_picker):
    """An untrained tiny model for tool_picker with tokenizer and contract.json (random weights)."""
    from transformers import AutoTokenizer

    from schemabuild.contract import build_contract, save_contract
    from schemabuild.tiny import build_tiny

    path = build_tiny(tool_picker, tmp_path_factory.mktemp("tiny") / "model")
    tok = AutoTokenizer.from_pretrained(path)
    save_contract(build_contract(tool_picker, tok, base_model="tiny", adapter=False), path)
    return path
