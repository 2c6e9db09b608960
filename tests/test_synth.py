"""`schemabuild synth` end to end: offline, through a real OpenAI-compatible server, killed and rerun, budget cap."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from schemabuild.synth.checks import GoldIndex, normalize
from schemabuild.cli import main
from schemabuild.contract import canonical_json, split_chat_row
from schemabuild.runs import latest_run, read_json, read_jsonl
from schemabuild.synth import SynthConfig, data_is_fresh
from schemabuild.task import load_jsonl_examples
from tests.conftest import EVALS, ROOT, TASKS
from tests.fake_openai import GENERATE_MARK, JUDGE_MARK, FakeOpenAI, fake_openai, system_text, user_text  # noqa: F401

MANIFEST_KEYS = {"task", "complete", "counts", "rejected_by_stage", "rejected_by_reason", "teacher", "ledger",
                 "fingerprint", "settings", "seeds", "versions", "config"}


def synth(*args, runs=None) -> "object":
    extra = ["--runs-dir", str(runs)] if runs else []
    result = CliRunner().invoke(main, ["synth", *args, *extra])
    return result


def rows(run_dir: Path, split: str) -> list[dict]:
    return list(read_jsonl(run_dir / "data" / f"{split}.jsonl"))


def content_hash(run_dir: Path) -> str:
    return hashlib.sha256(b"".join((run_dir / "data" / f"{s}.jsonl").read_bytes() for s in ("train", "val"))).hexdigest()


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """One offline `schemabuild synth tool_picker` (default settings) shared by the read-only tests."""
    runs = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(main, ["synth", "tool_picker", "--tasks-dir", str(TASKS), "--runs-dir", str(runs)],
                                env={"OPENAI_API_KEY": None, "OPENAI_BASE_URL": None})
    assert result.exit_code == 0, result.output
    return latest_run("tool_picker", runs), result.output


def test_offline_synth_writes_a_valid_dataset(offline_run, tool_picker):
    run_dir, output = offline_run
    data = run_dir / "data"
    assert {p.name for p in data.iterdir()} >= {"train.jsonl", "val.jsonl", "rejects.jsonl", "manifest.json"}
    train, val = rows(run_dir, "train"), rows(run_dir, "val")
    assert len(train) + len(val) >= 800  # the default --n
    assert 0.08 < len(val) / (len(train) + len(val)) < 0.12
    for row in train + val:
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        system, text, target = split_chat_row(row)
        assert system == tool_picker.instructions
        out = tool_picker.validate_output(target)
        assert canonical_json(out) == target  # the exact training target bytes
        assert out.query is None or out.query in text
    inputs = [split_chat_row(r)[1] for r in train + val]
    assert len({normalize(x) for x in inputs}) == len(inputs)
    # the hand-written examples are training rows
    assert {e.input for e in tool_picker.examples} <= {split_chat_row(r)[1] for r in train}
    # nothing from the gold set, not even overlapping
    gold = GoldIndex([e.input for e in load_jsonl_examples(tool_picker, EVALS / "tool_picker.jsonl")], 0.9)
    assert not [x for x in inputs if gold.match(x)]

    m = read_json(data / "manifest.json")
    assert MANIFEST_KEYS <= set(m)
    assert m["complete"] is True and m["reached_n"] is True
    assert m["counts"]["train"] == len(train) and m["counts"]["val"] == len(val)
    assert m["counts"]["kept"] == len(train) + len(val) == 800
    overlap = m["gold_overlap"][str(EVALS / "tool_picker.jsonl")]  # decontamination, shown: no gold row is in it
    assert overlap["exact"] == 0 and overlap["gold_rows"] == 56 and 0 <= overlap["word_3gram_share"] < 0.5
    assert str(EVALS / "dev" / "tool_picker.jsonl") in m["gold_overlap"]
    assert m["teacher"]["name"] == "offline" and "no LLM" in m["teacher"]["note"]
    assert m["fingerprint"] == tool_picker.fingerprint()
    assert m["versions"]["pydantic"] and m["versions"]["schemabuild"]
    assert m["settings"]["eval_file_sha"] is not None
    assert sum(m["rejected_by_stage"].values()) == m["counts"]["rejected"] == len(list(read_jsonl(data / "rejects.jsonl")))
    assert "teacher: offline" in output and "kept" in output and str(data) in output


def test_same_seed_same_data_other_seed_other_data(offline_run, tmp_path):
    run_dir, _ = offline_run
    again = synth("tool_picker")
    assert again.exit_code == 0, again.output
    second = latest_run("tool_picker")
    assert content_hash(second) == content_hash(run_dir)
    other = synth("tool_picker", "--seed", "7")
    assert other.exit_code == 0
    assert content_hash(latest_run("tool_picker")) != content_hash(run_dir)


@pytest.mark.parametrize("fmt,key", [("openai", "messages"), ("sharegpt", "conversations"), ("alpaca", "instruction")])
def test_export_formats_load_with_datasets(offline_run, tmp_path, fmt, key):
    import datasets

    run_dir, _ = offline_run
    out = tmp_path / fmt
    result = CliRunner().invoke(main, ["export", "tool_picker", "--format", fmt, "--run", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ds = datasets.load_dataset("json", data_files={"train": str(out / "train.jsonl"), "val": str(out / "val.jsonl")})
    assert ds["train"].num_rows == len(rows(run_dir, "train")) and ds["val"].num_rows == len(rows(run_dir, "val"))
    first = ds["train"][0]
    assert key in first
    target = {"openai": lambda r: r["messages"][2]["content"], "sharegpt": lambda r: r["conversations"][2]["value"],
              "alpaca": lambda r: r["output"]}[fmt](first)
    assert target == split_chat_row(rows(run_dir, "train")[0])[2]


def test_data_is_fresh_tracks_task_and_settings(offline_run, tool_picker, tmp_path):
    run_dir, _ = offline_run
    assert data_is_fresh(tool_picker, run_dir, SynthConfig())
    assert not data_is_fresh(tool_picker, run_dir, SynthConfig(n=500))
    assert not data_is_fresh(tool_picker, run_dir, SynthConfig(seed=1))
    assert not data_is_fresh(tool_picker, tmp_path, SynthConfig())  # no data at all
    # an edited task file makes the data stale
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tool_picker.py").write_text((TASKS / "tool_picker.py").read_text().replace("Billy, a Discord bot", "Billy, a bot"))
    from schemabuild.task import load_task

    assert not data_is_fresh(load_task("tool_picker", tasks), run_dir, SynthConfig())


def test_data_is_stale_when_the_teacher_would_change(offline_run, tool_picker, monkeypatch):
    run_dir, _ = offline_run
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert not data_is_fresh(tool_picker, run_dir, SynthConfig())


@pytest.mark.parametrize("args,flag", [
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--n", "0"], "--n"),
    (["--dedup-threshold", "0"], "--dedup-threshold"),
    (["--judge-min", "9"], "--judge-min"),
    (["--from-log", "nope.jsonl"], "--from-log"),
    (["--eval-file", "missing.jsonl"], "--eval-file"),
])
def test_bad_settings_are_one_line_errors_naming_the_flag(args, flag):
    result = synth("tool_picker", *args)
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: " + flag), result.output
    assert "Traceback" not in result.output


def test_offline_teacher_rejects_logged_inputs_it_cannot_label(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"messages": [{"role": "system", "content": "x"},
                                            {"role": "user", "content": "weather in Reykjavik?"}]}) + "\n")
    result = synth("tool_picker", "--from-log", str(log), "--n", "100")
    assert result.exit_code == 0, result.output
    rejects = list(read_jsonl(latest_run("tool_picker") / "data" / "rejects.jsonl"))
    mine = [r for r in rejects if r["input"] == "weather in Reykjavik?"]
    assert mine and mine[0]["stage"] == "teacher" and mine[0]["source"] == "log"
    assert "offline teacher" in mine[0]["reason"]


def test_bad_log_file_names_file_and_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"messages": []}\n{broken\n')
    result = synth("tool_picker", "--from-log", str(log))
    assert result.exit_code != 0 and f"{log}:2" in result.output


def test_init_then_synth_offline(tmp_path):
    tasks = tmp_path / "tasks"
    assert CliRunner().invoke(main, ["init", "mood", "--tasks-dir", str(tasks)]).exit_code == 0
    result = CliRunner().invoke(main, ["synth", "mood", "--tasks-dir", str(tasks), "--n", "5000"])
    assert result.exit_code == 0, result.output
    run_dir = latest_run("mood")
    m = read_json(run_dir / "data" / "manifest.json")
    assert m["complete"] is True and m["reached_n"] is False  # 3 examples cannot make 5000 pairs: it says so
    assert m["counts"]["kept"] == len(rows(run_dir, "train")) + len(rows(run_dir, "val")) > 3
    assert "only" in result.output and "--n 5000" in result.output
    assert m["gold_file"] is None  # no evals/mood.jsonl: decontamination skipped, and said so
    assert "skipping decontamination" in result.output


def test_an_unfinished_run_is_resumed_not_duplicated(tmp_path):
    first = synth("tool_picker", "--n", "100")
    assert first.exit_code == 0
    run_dir = latest_run("tool_picker")
    (run_dir / "data" / "manifest.json").unlink()  # as if the process had been killed before the end
    again = synth("tool_picker", "--n", "100")
    assert again.exit_code == 0 and "resuming" in again.output
    assert latest_run("tool_picker") == run_dir
    assert len([p for p in run_dir.parent.iterdir() if p.name != "latest"]) == 1
    assert (run_dir / "data" / "manifest.json").is_file()


# ---- through a real OpenAI-compatible server -------------------------------------------------------------

def _hex(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12]


def deterministic(body: dict) -> str:
    """Answers that depend only on the request: generated inputs, labels (1 in 16 broken), judge scores."""
    system, user = system_text(body), user_text(body)
    if system.startswith(GENERATE_MARK):
        k = int(re.search(r"Write exactly (\d+)", user).group(1))
        seed = _hex(json.dumps(body["messages"], sort_keys=True))
        return json.dumps({"inputs": [f"play the song {_hex(seed, i)}" for i in range(k)]})
    if system.startswith(JUDGE_MARK):
        song = re.search(r"play the song (\w+)", user)
        return json.dumps({"reason": "ok", "score": 2 if song and song.group(1).startswith("1") else 5})
    if user.startswith("play the song ") and user[len("play the song "):].startswith("0"):
        return "I think it is music.play"
    return json.dumps({"tool": "music.play", "query": user[len("play "):]})


def test_synth_through_openai_base_url_with_judge_and_log(fake_openai, tmp_path):  # noqa: F811
    fake_openai.responder = deterministic
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"model": "x", "messages": [{"role": "user", "content": "play the song logged1"}]}) + "\n")
    result = synth("tool_picker", "--n", "120", "--judge", "--from-log", str(log), "--concurrency", "4")
    assert result.exit_code == 0, result.output
    run_dir = latest_run("tool_picker")
    m = read_json(run_dir / "data" / "manifest.json")
    assert m["teacher"]["name"] == "openai" and m["teacher"]["model"] == "gpt-4o-mini"
    assert m["complete"] is True and m["counts"]["kept"] == 120
    assert m["ledger"]["calls"] == fake_openai.counts["/v1/chat/completions"] > 100
    assert m["ledger"]["prompt_tokens"] == 7 * m["ledger"]["calls"]
    assert m["rejected_by_stage"]["parse"] > 0 and m["rejected_by_stage"]["judge"] > 0
    inputs = {split_chat_row(r)[1] for r in rows(run_dir, "train") + rows(run_dir, "val")}
    assert "play the song logged1" in inputs
    assert not any(re.fullmatch(r"play the song [01]\w+", x) for x in inputs)  # broken labels and low scores dropped
    # a rerun with the same settings is answered from the cache: no new HTTP call, same rows
    before = fake_openai.counts["/v1/chat/completions"]
    again = synth("tool_picker", "--n", "120", "--judge", "--from-log", str(log), "--concurrency", "4")
    assert again.exit_code == 0
    assert fake_openai.counts["/v1/chat/completions"] == before
    assert content_hash(latest_run("tool_picker")) == content_hash(run_dir)


def test_budget_cap_writes_a_partial_dataset(fake_openai):  # noqa: F811
    fake_openai.responder = deterministic
    # 12 tokens a call at $1000 per 1M tokens = $0.012 a call: the cap stops it after ~25 calls
    result = synth("tool_picker", "--n", "300", "--price-in", "1000", "--price-out", "1000", "--budget-usd", "0.3",
                   "--concurrency", "2")
    assert result.exit_code == 0, result.output
    assert "budget" in result.output and "complete: false" in result.output
    run_dir = latest_run("tool_picker")
    m = read_json(run_dir / "data" / "manifest.json")
    assert m["complete"] is False and m["ledger"]["budget_hit"] is True
    assert 0.3 <= m["ledger"]["cost_usd"] < 0.3 + 3 * 0.012  # only in-flight calls finish after the cap
    train = rows(run_dir, "train") + rows(run_dir, "val")
    synthesized = [r for r in train if split_chat_row(r)[1].startswith("play the song")]
    assert synthesized and len(train) < 300
    assert fake_openai.counts["/v1/chat/completions"] < 40


def _env(runs: Path, url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return {**env, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "test-key", "SCHEMABUILD_RUNS": str(runs),
            "SCHEMABUILD_TASKS": str(TASKS), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


SYNTH = [sys.executable, "-m", "schemabuild", "synth", "tool_picker", "--n", "200", "--concurrency", "4"]


@pytest.mark.slow
def test_killed_synth_rerun_repeats_no_cached_call_and_matches_uninterrupted(tmp_path):
    killed = FakeOpenAI(latency=0.03, responder=deterministic).start()
    clean = FakeOpenAI(latency=0.0, responder=deterministic).start()
    try:
        proc = subprocess.Popen(SYNTH, env=_env(tmp_path / "a", killed.url), cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while killed.counts["/v1/chat/completions"] < 60 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "synth finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        calls_at_kill = killed.counts["/v1/chat/completions"]
        assert not (tmp_path / "a" / "tool_picker" / "latest" / "data" / "manifest.json").exists()

        rerun = subprocess.run(SYNTH, env=_env(tmp_path / "a", killed.url), cwd=tmp_path, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert "resuming" in rerun.stderr + rerun.stdout
        whole = subprocess.run(SYNTH, env=_env(tmp_path / "b", clean.url), cwd=tmp_path, capture_output=True, text=True)
        assert whole.returncode == 0, whole.stderr[-2000:]

        # only calls in flight at the kill (at most --concurrency) were asked twice
        repeated = sum(c - 1 for c in killed.message_counts.values() if c > 1)
        assert repeated <= 4
        assert killed.counts["/v1/chat/completions"] <= clean.counts["/v1/chat/completions"] + 4
        assert killed.counts["/v1/chat/completions"] > calls_at_kill  # the rerun did finish the work
        a, b = latest_run("tool_picker", tmp_path / "a"), latest_run("tool_picker", tmp_path / "b")
        assert len([p for p in a.parent.iterdir() if p.name != "latest"]) == 1  # resumed, not a second run
        assert len(rows(a, "train")) + len(rows(a, "val")) == len(rows(b, "train")) + len(rows(b, "val")) == 200
        assert content_hash(a) == content_hash(b)
    finally:
        killed.stop()
        clean.stop()


def test_budget_reached_while_judging_keeps_the_labelled_rows(fake_openai):  # noqa: F811
    fake_openai.responder = deterministic
    # 1 generation call + 16 label calls fit in $0.3 at $0.012 a call; judging 16 pairs does not
    result = synth("tool_picker", "--n", "60", "--judge", "--price-in", "1000", "--price-out", "1000",
                   "--budget-usd", "0.3", "--concurrency", "2")
    assert result.exit_code == 0, result.output
    m = read_json(latest_run("tool_picker") / "data" / "manifest.json")
    assert m["complete"] is False and m["stop_reason"].startswith("budget reached")
    judge_calls = sum(1 for r in fake_openai.requests if JUDGE_MARK in json.dumps(r["body"] or {}))
    assert 0 < judge_calls < 16
    assert m["counts"]["kept"] > 48  # the labelled pairs are saved even though judging stopped
