"""The `train` command's flow (schemabuild.pipeline): which run it trains, and that a train after a custom synth reuses
that data instead of paying the teacher again (issue 9) — in one process and under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import schemabuild.pipeline as pipeline
from schemabuild.cli import main
from schemabuild.contract import load_contract
from schemabuild.errors import ConfigError
from schemabuild.pipeline import PipelineConfig, pick_run
from schemabuild.runs import Run, latest_run, read_json
from tests.fake_openai import fake_openai  # noqa: F401  (the fixture)
from tests.test_synth import deterministic

CUSTOM = ["--teacher-model", "Qwen/Qwen2.5-7B-Instruct", "--n", "40", "--concurrency", "4"]


@pytest.fixture
def trained_calls(monkeypatch):
    """`pipeline.train_run` replaced by a recorder: the flow runs, nothing is trained."""
    calls = []

    def fake_train_run(task, run_dir, cfg, validator=None):
        calls.append(Run(run_dir))
        return Run(run_dir).model

    monkeypatch.setattr(pipeline, "train_run", fake_train_run)
    return calls


def _runs(task="tool_picker"):
    root = latest_run(task).parent
    return sorted(p.name for p in root.iterdir() if p.name != "latest")


def test_train_after_a_custom_synth_reuses_its_data(fake_openai, trained_calls):  # noqa: F811
    """The README's `synth --teacher-model X --n 2000` then `train --n 2000`: no new synthesis, no teacher call."""
    fake_openai.responder = deterministic
    runner = CliRunner()
    assert runner.invoke(main, ["synth", "tool_picker", *CUSTOM]).exit_code == 0
    synth_run, calls = latest_run("tool_picker"), fake_openai.counts["/v1/chat/completions"]
    for flags in (["--n", "40"], []):  # the same --n, or none: the data as it is
        result = runner.invoke(main, ["train", "tool_picker", "--no-eval", *flags])
        assert result.exit_code == 0, result.output
        assert "synthesizing" not in result.output
        assert trained_calls[-1].dir == synth_run
    assert fake_openai.counts["/v1/chat/completions"] == calls and len(_runs()) == 1


def test_train_reuses_custom_data_without_the_teacher_configured(fake_openai, monkeypatch, tool_picker):  # noqa: F811
    """Synthesized with an API teacher, trained in a shell without the key: the data is still the task's data."""
    fake_openai.responder = deterministic
    assert CliRunner().invoke(main, ["synth", "tool_picker", *CUSTOM]).exit_code == 0
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert pick_run(tool_picker, PipelineConfig()) == latest_run("tool_picker")


def test_another_n_resynthesizes_with_the_recorded_teacher(fake_openai, trained_calls, tool_picker):  # noqa: F811
    fake_openai.responder = deterministic
    assert CliRunner().invoke(main, ["synth", "tool_picker", *CUSTOM]).exit_code == 0
    first = latest_run("tool_picker")
    new = pick_run(tool_picker, PipelineConfig(n=50))
    assert new != first
    manifest = Run(new).manifest()
    assert manifest["counts"]["requested"] == 50
    assert manifest["teacher"]["model"] == "Qwen/Qwen2.5-7B-Instruct" and manifest["config"]["concurrency"] == 4


def test_stale_or_trained_data_is_not_reused(tool_picker, tmp_path):
    assert CliRunner().invoke(main, ["synth", "tool_picker", "--n", "30"]).exit_code == 0
    run = Run(latest_run("tool_picker"))
    assert pipeline.reusable(tool_picker, run, PipelineConfig())
    assert not pipeline.reusable(tool_picker, run, PipelineConfig(n=31))
    changed = tool_picker.__class__(**{**tool_picker.__dict__, "instructions": tool_picker.instructions + " Be brief."})
    assert not pipeline.reusable(changed, run, PipelineConfig())
    run.model.mkdir()
    run.contract.write_text("{}")
    assert not pipeline.reusable(tool_picker, run, PipelineConfig())


def test_under_a_launcher_nothing_is_synthesized(tool_picker, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="synthesize first"):
        pick_run(tool_picker, PipelineConfig())


@pytest.mark.slow
def test_torchrun_trains_the_latest_custom_synth(tool_picker, tmp_path):
    """`schemabuild synth` with non-default settings, then `torchrun -m schemabuild train` (no --run): every process
    trains that run instead of refusing with "synthesize first"."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", SCHEMABUILD_RUNS=str(tmp_path / "runs"), OMP_NUM_THREADS="1")
    env.pop("OPENAI_API_KEY", None)
    env.pop("OPENAI_BASE_URL", None)
    synth = subprocess.run([sys.executable, "-m", "schemabuild", "synth", "tool_picker", "--n", "60", "--val-fraction",
                            "0.2", "--dedup-threshold", "0.8"], env=env, capture_output=True, text=True, timeout=300)
    assert synth.returncode == 0, synth.stderr[-2000:]
    run_dir = latest_run("tool_picker", tmp_path / "runs")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
           "-m", "schemabuild", "train", "tool_picker", "--base", "tiny", "--no-eval", "--device", "cpu",
           "--batch-size", "4", "--max-steps", "2", "--logging-steps", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert latest_run("tool_picker", tmp_path / "runs") == run_dir
    assert len([p for p in run_dir.parent.iterdir() if p.name != "latest"]) == 1
    resolved = read_json(run_dir / "train_config.json")
    assert resolved["world_size"] == 2 and resolved["n"] is None
    assert json.loads((run_dir / "model" / "train_summary.json").read_text())["global_step"] == 2
    assert load_contract(run_dir / "model")["base_model"] == "tiny"


def test_fingerprint_names_code_settings_data_and_task(tool_picker, monkeypatch):
    import schemabuild.runs as runs

    assert CliRunner().invoke(main, ["synth", "tool_picker", "--n", "30"]).exit_code == 0
    run = Run(latest_run("tool_picker"))
    settings = pipeline.training_settings(PipelineConfig(eval=False))
    fp = runs.training_fingerprint(tool_picker, settings, run)
    assert set(fp) == {"code", "settings", "data", "task"} and fp == runs.training_fingerprint(tool_picker, settings, run)
    assert settings == pipeline.training_settings(PipelineConfig(eval=True, logging_steps=3))  # not training settings
    other = runs.training_fingerprint(tool_picker, pipeline.training_settings(PipelineConfig(lr=5e-4)), run)
    assert other["settings"] != fp["settings"] and other["code"] == fp["code"]
    monkeypatch.setattr(runs, "TRAINING_CODE", ("train",))
    assert runs.code_hash() != fp["code"]


@pytest.mark.slow
def test_eval_gate_retrains_when_the_code_that_made_the_run_changed(tool_picker, monkeypatch, capsys):
    """ensure_run (the eval gate's fixture) reuses a run made by the code, settings and data there are now, and trains
    a new one when any of them differs: here the training code's hash."""
    import schemabuild.runs as runs
    from schemabuild.pipeline import ensure_run

    tiny = dict(base="tiny", n=40, epochs=1, batch_size=8, device="cpu", save_steps=10_000)
    first = ensure_run(tool_picker, **tiny)
    fp = read_json(Run(first).fingerprint_file)
    assert fp == runs.training_fingerprint(tool_picker, pipeline.training_settings(PipelineConfig(eval=False, **tiny)),
                                           Run(first))
    assert ensure_run(tool_picker, **tiny) == first  # nothing changed: reused
    assert ensure_run(tool_picker, **{**tiny, "lr": 2e-3}) != first  # other settings: trained again
    latest = latest_run("tool_picker")
    real = runs.code_hash()
    monkeypatch.setattr(runs, "code_hash", lambda: "edited" + real[6:])
    capsys.readouterr()
    again = ensure_run(tool_picker, **{**tiny, "lr": 2e-3})
    assert again != latest and Run(again).is_trained()
    assert f"{latest} is stale (code changed); training one" in capsys.readouterr().out
    assert read_json(Run(again).fingerprint_file)["code"] == "edited" + real[6:]
