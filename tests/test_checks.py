"""The validation chain: each stage rejects crafted rows with its own reason; dedup, near-dup, decontamination."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import BaseModel, field_serializer

from schemabuild import Example, Task, TaskError
from schemabuild.synth.checks import (Candidate, GoldIndex, Row, apply_judge, check_rows, count_reasons, jaccard,
                                near_duplicates, normalize, shingles)


def C(text, raw, **kw):
    return Candidate(text, raw if isinstance(raw, str) or raw is None else json.dumps(raw), **kw)


def only(rejects, stage):
    found = [r for r in rejects if r.stage == stage]
    assert len(found) == 1, [(r.stage, r.reason) for r in rejects]
    return found[0]


def test_each_stage_rejects_with_its_reason(tool_picker):
    rows = [
        C("play some jazz", {"tool": "music.play", "query": "jazz"}),
        C("teacher died", None, error="timeout after 5 retries"),
        C("not json at all", "Sure! The tool is music.play"),
        C("bad tool", {"tool": "discord_post.video", "query": "cats"}),
        C("missing field", {"tool": "web.search"}),
        C("no_tool with a query", {"tool": "no_tool", "query": "oops"}),
        C("search without query", {"tool": "web.search", "query": None}),
    ]
    kept, rejects = check_rows(tool_picker, rows, gold_inputs=[])
    assert [r.input for r in kept] == ["play some jazz"]
    assert only(rejects, "teacher").reason == "timeout after 5 retries"
    assert only(rejects, "parse").reason.startswith("not JSON")
    pyd = [r for r in rejects if r.stage == "pydantic"]
    assert [r.input for r in pyd] == ["bad tool", "missing field"]
    assert "'tool'" in pyd[0].reason and "'query'" in pyd[1].reason
    val = [r for r in rejects if r.stage == "validator"]
    assert [r.reason for r in val] == ["_no_tool_has_no_query: no_tool must have query null",
                                       "_no_tool_has_no_query: web.search needs a query"]
    # every reject keeps the raw answer it was given
    assert only(rejects, "parse").raw == "Sure! The tool is music.play"


def test_code_fenced_json_is_parsed(tool_picker):
    kept, rejects = check_rows(tool_picker, [C("play jazz", '```json\n{"tool":"music.play","query":"jazz"}\n```')])
    assert len(kept) == 1 and not rejects
    assert kept[0].output.query == "jazz"


class Count(BaseModel):
    n: int

    @field_serializer("n")
    def as_text(self, v: int) -> str:  # dumps a string where the schema says integer
        return str(v)


def test_jsonschema_stage_catches_targets_the_grammar_cannot_produce():
    task = Task(name="counter", instructions="count", output=Count, examples=[Example("one", {"n": 1})])
    kept, rejects = check_rows(task, [C("two", {"n": 2})])
    assert not kept
    assert rejects[0].stage == "jsonschema" and "'n'" in rejects[0].reason and "integer" in rejects[0].reason


def test_a_crashing_validator_is_a_task_error(tool_picker):
    def broken(text, out):
        raise KeyError("boom")

    task = Task(name="t", instructions="x", output=tool_picker.output, examples=tool_picker.examples[:1],
                validators=[broken])
    with pytest.raises(TaskError, match="validator broken raised KeyError"):
        check_rows(task, [C("hi", {"tool": "no_tool", "query": None})])


def test_exact_dedup_uses_normalized_text(tool_picker):
    out = {"tool": "music.play", "query": "Daft Punk"}
    rows = [C("billy play some Daft Punk", out), C("  Billy, play some daft punk!! ", out), C("billy play some Daft Punk", out)]
    kept, rejects = check_rows(tool_picker, rows)
    assert [r.input for r in kept] == ["billy play some Daft Punk"]
    assert [r.stage for r in rejects] == ["dedup", "dedup"]
    assert "billy play some Daft Punk" in rejects[0].reason


def test_near_duplicates_are_dropped_distinct_rows_kept(tool_picker):
    out = {"tool": "web.search", "query": "the release date of the new zelda game"}
    rows = [
        C("billy look up the release date of the new zelda game", out),
        C("billy look up the release date of the new zelda game pls", out),  # near-dup
        C("search the release date of the new zelda game", out),              # different enough
    ]
    kept, rejects = check_rows(tool_picker, rows, dedup_threshold=0.9)
    assert [r.input for r in kept] == [rows[0].input, rows[2].input]
    assert only(rejects, "near_dup").input == rows[1].input
    # a threshold of 1.0 keeps everything that is not identical after normalization
    kept, rejects = check_rows(tool_picker, rows, dedup_threshold=1.0)
    assert len(kept) == 3 and not rejects


def test_near_duplicates_matches_brute_force():
    rng = random.Random(0)
    words = "the cat dog sat on a mat red blue big small ran far".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))) for _ in range(400)]
    sets = [shingles(t) for t in texts]
    for threshold in (0.5, 0.8, 0.9):
        fast = near_duplicates(sets, threshold)
        kept, brute = [], {}
        for i, s in enumerate(sets):
            hit = next((j for j in kept if jaccard(s, sets[j]) >= threshold), None)
            if hit is None:
                kept.append(i)
            else:
                brute[i] = hit
        assert set(fast) == set(brute)
        assert fast or threshold > 0.5  # the data does hold near-duplicates
        assert all(jaccard(sets[i], sets[j]) >= threshold for i, j in fast.items())


def test_decontamination_exact_and_overlap(tool_picker):
    gold = ["post a youtube video about black holes", "send a gif of a thumbs up"]
    rows = [
        C("Post a YouTube video about black holes!", {"tool": "discord_post.youtube", "query": "black holes"}),
        C("hey billy send a gif of a thumbs up pls", {"tool": "discord_post.gif", "query": "a thumbs up"}),
        C("send a gif of a dancing cat", {"tool": "discord_post.gif", "query": "a dancing cat"}),
    ]
    kept, rejects = check_rows(tool_picker, rows, gold_inputs=gold)
    assert [r.input for r in kept] == ["send a gif of a dancing cat"]
    dec = [r for r in rejects if r.stage == "decontam"]
    assert dec[0].reason.startswith("same normalized text as gold input")
    assert dec[1].reason.startswith("shingle overlap >= 0.9 with gold input 'send a gif of a thumbs up'")
    # without a gold set nothing is decontaminated
    kept, _ = check_rows(tool_picker, rows, gold_inputs=None)
    assert len(kept) == 3


def test_gold_index_overlap_is_symmetric_containment():
    idx = GoldIndex(["what's the weather in Paris tomorrow"], 0.9)
    assert idx.match("billy what's the weather in paris tomorrow??")
    assert idx.match("weather in Paris tomorrow")  # contained in the gold input
    assert idx.match("what's the weather in Tokyo tomorrow") is None


def test_judge_drops_low_scores_and_keeps_unscored(tool_picker):
    rows = [Row(f"play song {i}", tool_picker.output(tool="music.play", query=f"song {i}")) for i in range(3)]
    kept, rejects = apply_judge(rows, [5, 2, None], judge_min=3)
    assert [r.input for r in kept] == ["play song 0", "play song 2"]
    assert rejects[0].stage == "judge" and rejects[0].reason == "score 2 < 3"
    assert json.loads(rejects[0].raw) == {"tool": "music.play", "query": "song 1"}


def test_count_reasons_groups_by_rule(tool_picker):
    out = {"tool": "music.play", "query": "jazz"}
    rows = [C("play jazz", out), C("Play jazz!", out), C("play, jazz", out), C("x", "nope")]
    _, rejects = check_rows(tool_picker, rows)
    by_stage, by_reason = count_reasons(rejects)
    assert by_stage == {"parse": 1, "dedup": 2}
    assert by_reason["dedup: same normalized input"] == 2


def test_normalize():
    assert normalize("  Hey,   BILLY!! play  'Daft-Punk'? ") == "hey billy play daft punk"
    assert normalize("café 🙏") == "café 🙏"
