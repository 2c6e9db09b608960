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
# Converted registry bases (SmolLM2, ~540 MB) are cached once per checkout, never in the user's own cache.
os.environ.setdefault("SCHEMABUILD_CACHE", str(ROOT / ".schemabuild" / "cache"))


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
    from schemabuild.train.tiny import build_tiny

    path = build_tiny(tool_picker, tmp_path_factory.mktemp("tiny") / "model")
    tok = AutoTokenizer.from_pretrained(path)
    save_contract(build_contract(tool_picker, tok, base_model="tiny", adapter=False), path)
    return path


# ---- a trained tiny model (owned by the training work) ----------------------------------------------------

PREFIXES = ["", "hey ", "yo ", "@billy ", "ok ", "pls "]
SUFFIXES = ["", " pls", " thanks", " !!", " :)", " asap"]


def offline_rows(task, copies: int = 5, seed: int = 0) -> list[dict]:
    """Chat rows made from the task's own examples with light, label-preserving rewording (no teacher needed)."""
    import random

    from schemabuild.contract import chat_row

    rng = random.Random(seed)
    rows, seen = [], set()
    for ex in task.examples:
        for i in range(copies):
            text = ex.input if i == 0 else rng.choice(PREFIXES) + ex.input + rng.choice(SUFFIXES)
            if i % 2 == 1:
                text = text.lower()
            if text not in seen:
                seen.add(text)
                rows.append(chat_row(task, text, ex.output))
    rng.shuffle(rows)
    return rows


def write_offline_run(task, root, run_id: str = "trained", copies: int = 5) -> Path:
    """A run folder `<root>/<task>/<run_id>/data/{train,val}.jsonl` built from `offline_rows`."""
    from schemabuild.runs import new_run, write_jsonl

    run_dir = new_run(task.name, root, run_id)
    rows = offline_rows(task, copies)
    n_val = max(4, len(rows) // 10)
    write_jsonl(run_dir / "data" / "train.jsonl", rows[n_val:])
    write_jsonl(run_dir / "data" / "val.jsonl", rows[:n_val])
    return run_dir


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tool_picker):
    """A tool_picker run (`<root>/tool_picker/trained/{data,model}`) whose tiny model was trained by the real
    `train_run` (full training, CPU, ~40 s on 2 idle cores): `model/` holds exactly what `schemabuild train` writes.

    Returns the run directory; its runs root is `run.parent.parent`.
    """
    from schemabuild.train import TrainConfig, train_run

    root = tmp_path_factory.mktemp("trained") / "runs"
    run_dir = write_offline_run(tool_picker, root, copies=3)
    # ~140 rows x 12 epochs (~200 steps of 8): fits its training inputs and stops at end-of-turn; not a general model.
    train_run(tool_picker, run_dir, TrainConfig(base="tiny", device="cpu", save_steps=10_000,
                                                epochs=12, lr=2e-3))
    return run_dir

# Spinning OpenMP threads slow torch on a shared CPU several-fold; must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models decode far faster on one intra-op thread than on two contended cores (use per module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
