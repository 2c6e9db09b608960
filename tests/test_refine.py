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
