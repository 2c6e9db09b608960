"""Refinement: weak spots from a validation report, targeted offline pairs, and a full round on a tiny run."""

from __future__ import annotations

import json

import pytest

from schemabuild.contract import split_chat_row
from schemabuild.evaluate import score
from schemabuild.refine import FOCUS_HINT, WeakSpot, focus_task, new_pairs, weak_spots
from schemabuild.task import Example


def val_report(tool_picker):
    gold = [Example("set a timer for 5 min", {"tool": "timer.set", "query": "5 min"}),
            Example("timer 10 minutes", {"tool": "timer.set", "query": "10 minutes"}),
            Example("play jazz", {"tool": "music.play", "query": "jazz"}),
            Example("weather in Oslo", {"tool": "weather.forecast", "query": "Oslo"}),
            Example("gif of a cat", {"tool": "discord_post.gif", "query": "a cat"})]
    answers = ['{"tool":"web.search","query":"5 min"}', '{"tool":"timer.set","query":"10 minutes"}',
               '{"tool":"music.play","query":"jazz"}', '{"tool":"music.play","query":"Oslo"}',
               '{"tool":"discord_post.gif","query":"a cat"}']
    return {"models": {"finetuned": score(tool_picker, gold, answers)}}


def test_weak_spots_are_the_worst_enum_values_then_fields(tool_picker):
    spots = weak_spots(val_report(tool_picker))
    # weather.forecast recall 0/1, timer.set 1/2; query is right everywhere
    assert [(s.path, s.value, s.score, s.rows) for s in spots] == [
        ("tool", "weather.forecast", 0.0, 1), ("tool", "timer.set", 0.5, 2)]


def test_focus_task_keeps_only_examples_with_the_weak_values(tool_picker):
    focused = focus_task(tool_picker, [WeakSpot("tool", "timer.set", 0.5, 2)])
    assert {ex.output.tool for ex in focused.examples} == {"timer.set"}
    assert len(focused.examples) == 6
    assert focused.hints[FOCUS_HINT] == ["messages whose correct `tool` is 'timer.set'"]
    assert focused.instructions == tool_picker.instructions
    mixed = focus_task(tool_picker, [WeakSpot("query", None, 0.1, 9), WeakSpot("tool", "no_tool", 0.5, 2)])
    assert {ex.output.tool for ex in mixed.examples} == {"no_tool"}
    assert mixed.hints[FOCUS_HINT][0] == "messages where getting `query` exactly right is tricky"


def test_new_pairs_target_the_weak_value_and_skip_train_val_and_gold(tool_picker, tmp_path):
    from tests.conftest import write_offline_run

    run_dir = write_offline_run(tool_picker, tmp_path / "runs", copies=2)
    train = {split_chat_row(json.loads(x))[1].lower() for x in (run_dir / "data" / "train.jsonl").read_text().splitlines()}
    rows, rejects, teacher = new_pairs(tool_picker, run_dir, [WeakSpot("tool", "timer.set", 0.5, 2)], n=20, seed=7)
    assert teacher == "offline"
    assert 5 <= len(rows) <= 20
    outputs = [json.loads(split_chat_row(r)[2]) for r in rows]
    assert {o["tool"] for o in outputs} == {"timer.set"}
    assert all(o["query"] for o in outputs)  # the task's validator ran: timer.set needs a query
    assert not {split_chat_row(r)[1].lower() for r in rows} & train


@pytest.mark.slow
def test_refine_round_on_a_tiny_run(trained_run, tool_picker, tmp_path):
    """One round: evaluate val, add targeted pairs, retrain, report before/after; a worse round is undone."""
    import shutil

    from schemabuild.refine import refine
    from schemabuild.train import TrainConfig

    from schemabuild.contract import chat_row
    from schemabuild.runs import read_jsonl, write_jsonl

    run_dir = tmp_path / "runs" / "tool_picker" / "r"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("checkpoints", "eval"))
    # A weak spot by construction: validation rows of other tools relabelled timer.set (the model answers their own
    # tool), so timer.set's recall on the validation split is below 1 whatever the model learned.
    val = [split_chat_row(r) for r in read_jsonl(run_dir / "data" / "val.jsonl")]
    relabelled = [chat_row(tool_picker, text, {"tool": "timer.set", "query": json.loads(target)["query"] or "5 min"})
                  for _, text, target in val if json.loads(target)["tool"] != "timer.set"]
    assert len(relabelled) >= 3
    write_jsonl(run_dir / "data" / "val.jsonl", relabelled)
    train_before = (run_dir / "data" / "train.jsonl").read_text()
    weights_before = (run_dir / "model" / "model.safetensors").read_bytes()
    cfg = TrainConfig(base="tiny", device="cpu", save_steps=10_000, max_steps=30, epochs=8)
    report = refine(tool_picker, run_dir, cfg, rounds=1, per_round=24)

    [entry] = report["rounds"]
    assert (run_dir / "refine" / "report.json").is_file()
    assert (run_dir / "refine" / "round-1" / "before" / "report.json").is_file()
    assert ("tool", "timer.set") in {(w["path"], w["value"]) for w in entry["weak"]}
    assert entry["before"]["field.tool"] < 1.0
    assert entry["added"] > 0 and entry["teacher"] == "offline"
    added = (run_dir / "refine" / "round-1" / "added.jsonl").read_text()
    assert len(added.splitlines()) == entry["added"]
    weak_values = {w["value"] for w in entry["weak"] if w["path"] == "tool" and w["value"]}
    assert "timer.set" in weak_values  # the new pairs aim at the weak tools only
    assert {json.loads(split_chat_row(json.loads(x))[2])["tool"] for x in added.splitlines()} <= weak_values
    assert set(entry["after"]) == set(entry["before"]) and "field.tool" in entry["after"]
    assert "field.tool" in report["table"] and "before" in report["table"]
    train_after = (run_dir / "data" / "train.jsonl").read_text()
    weights_after = (run_dir / "model" / "model.safetensors").read_bytes()
    if entry["kept"]:
        assert train_after == train_before + added and weights_after != weights_before
    else:  # undone: nothing lost
        assert train_after == train_before and weights_after == weights_before
