"""The offline teacher: recombined pairs stay valid and consistently labelled, for any task shape."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Literal, Optional

from pydantic import BaseModel

from schemabuild import Example, Task
from schemabuild.synth.checks import Candidate, check_rows, normalize
from schemabuild.contract import canonical_json
from schemabuild.synth.offline import OfflineTeacher
from schemabuild.task import load_jsonl_examples
from tests.conftest import EVALS


def test_carriers_and_groups_of_tool_picker(tool_picker):
    t = OfflineTeacher(tool_picker)
    assert len(t.groups) == 8  # one per tool: examples agree on `tool`, differ in the query slot
    by_input = {tool_picker.examples[c.example].input: c for c in t.carriers}
    c = by_input["billy what's the weather in Paris tomorrow"]
    assert c.parts == ["billy what's the weather in ", ("query",), " tomorrow"]
    assert by_input["good night everyone"].slots == ()  # no_tool, query null: variants only
    assert "billy" in t.openers and "can you" in t.openers


def test_pool_is_valid_consistent_distinct_and_deterministic(tool_picker):
    t = OfflineTeacher(tool_picker)
    pairs = t.pool(1200, seed=0)
    assert len(pairs) == 1200
    assert pairs == OfflineTeacher(tool_picker).pool(1200, seed=0)
    assert pairs != t.pool(1200, seed=1)
    assert len({normalize(x) for x, _ in pairs}) == len(pairs)
    example_inputs = {normalize(e.input) for e in tool_picker.examples}
    tools_of_example_queries = {e.output.query: e.output.tool for e in tool_picker.examples}
    for text, raw in pairs:
        out = tool_picker.validate_output(raw)
        assert canonical_json(out) == raw
        assert normalize(text) not in example_inputs
        if out.query is not None:
            assert out.query in text  # copied verbatim (a shouted or misspelt slot is copied as it is)
            # the donor value comes from an example with the same tool, or is made up, or a variant reshaped it
            assert out.query in t.invented | t.reshaped or tools_of_example_queries[out.query] == out.tool
        else:
            assert out.tool == "no_tool"
    tools = [json.loads(raw)["tool"] for _, raw in pairs]
    assert min(tools.count(t) for t in set(tools)) >= 100  # classes interleaved, no_tool included
    invented = [x for x, raw in pairs if json.loads(raw)["query"] in t.invented]
    assert 0.2 * len(pairs) < len(invented) < 0.8 * len(pairs)  # real slot values stay common
    assert any(x.startswith("set a timer for ") and x.endswith(" for the tea") for x, _ in pairs)  # spliced carrier


def test_over_a_thousand_pairs_survive_the_checks(tool_picker):
    t = OfflineTeacher(tool_picker)
    gold = [e.input for e in load_jsonl_examples(tool_picker, EVALS / "tool_picker.jsonl")]
    cands = [Candidate(x, raw) for x, raw in t.pool(1500, seed=0)]
    kept, rejects = check_rows(tool_picker, cands, dedup_threshold=0.9, gold_inputs=gold)
    assert len(kept) >= 1000
    assert len(rejects) < 0.1 * len(cands)


def test_teacher_protocol_methods(tool_picker):
    t = OfflineTeacher(tool_picker)
    inputs = asyncio.run(t.generate_inputs(tool_picker, 50, 3))
    assert len(inputs) == 50
    labelled = asyncio.run(t.label(tool_picker, inputs[:5] + ["a message it never built"]))
    assert all(r.raw and r.error is None for r in labelled[:5])
    assert labelled[5].raw is None and "offline teacher" in labelled[5].error
    assert asyncio.run(t.judge(tool_picker, [("a", "{}")])) == [None]
    assert t.ledger()["calls"] == 0 and t.ledger()["cost_usd"] == 0
    assert "no LLM" in t.note() and "48 examples" in t.note()


class Review(BaseModel):
    sentiment: Literal["positive", "negative"]
    product: Optional[str]
    summary: str


def test_enum_fields_and_non_verbatim_strings_are_never_slots():
    # "positive" occurs in the input but is a Literal; `summary` does not occur verbatim: neither is a slot
    task = Task(name="reviews", instructions="x", output=Review, examples=[
        Example("really positive about the blender", Review(sentiment="positive", product="the blender", summary="likes it")),
        Example("the toaster is great", Review(sentiment="positive", product="the toaster", summary="likes it")),
        Example("the kettle broke", Review(sentiment="negative", product="the kettle", summary="broken")),
    ])
    t = OfflineTeacher(task)
    assert [c.slots for c in t.carriers] == [(("product",),)] * 3
    assert len(t.groups) == 2  # (positive, likes it) and (negative, broken)
    pairs = t.pool(40, seed=0)
    assert pairs
    for text, raw in pairs:
        out = Review.model_validate_json(raw)
        assert out.product in text
        if out.sentiment == "negative":
            assert out.product in {"the kettle"} | t.invented | t.reshaped  # its group has no other example donor
        assert "positive" not in text or out.sentiment == "positive"


class Mood(BaseModel):
    mood: Literal["happy", "sad"]
    note: Optional[str] = None


class Complaints(BaseModel):
    mood: Literal["happy", "sad"]
    count: int


def test_a_group_without_slots_gets_joined_and_crossed_messages_of_its_own_label():
    """Slot-free examples of one label make new messages (joined, crossed at a shared word) of that label only;
    not where the output holds a value the text could change (a count)."""
    happy = ["what a lovely day with friends", "i love this sunny weather", "the party with friends was great"]
    sad = ["my cat is sick today", "the rain ruined the picnic"]
    task = Task(name="moods", instructions="x", output=Mood, examples=[Example(t, Mood(mood="happy")) for t in happy]
                + [Example(t, Mood(mood="sad")) for t in sad])
    t = OfflineTeacher(task)
    made = {k: [c for c in v if c.kind in ("joined", "crossed")] for k, v in t.spliced.items()}
    by_mood = {json.loads(k)["mood"]: v for k, v in made.items()}
    joined = [c.parts[0] for c in by_mood["happy"] if c.kind == "joined"]
    crossed = [c.parts[0] for c in by_mood["happy"] if c.kind == "crossed"]
    assert 1 <= len(joined) <= len(happy) and 1 <= len(crossed) <= len(happy)
    assert all(sum(h.lower() in j.lower() for h in happy) == 2 for j in joined)  # two of its own examples
    assert "what a lovely day with friends was great" in crossed or "the party with friends" in " ".join(crossed)
    assert not any(s in " ".join(joined + crossed) for s in sad)  # never another label's text
    pairs = t.pool(60, seed=0)
    assert any(sum(h in text.lower() for h in happy) == 2 and json.loads(raw)["mood"] == "happy" for text, raw in pairs)
    for text, raw in pairs:
        assert json.loads(raw)["mood"] == ("sad" if any(w in text.lower() for w in ("sick", "rain")) else "happy")

    counted = Task(name="counted", instructions="x", output=Complaints, examples=[
        Example(t, Complaints(mood="sad", count=1)) for t in sad] + [Example(happy[0], Complaints(mood="happy", count=0))])
    assert not any(c.kind in ("joined", "crossed") for v in OfflineTeacher(counted).spliced.values() for c in v)


class Trip(BaseModel):
    city: str
    days: int


def test_hints_named_after_the_field_fill_slots_other_hints_do_not():
    task = Task(name="trips", instructions="x", output=Trip,
                examples=[Example("3 days in Rome please", Trip(city="Rome", days=3)),
                          Example("plan 3 days in Lisbon", Trip(city="Lisbon", days=3))],
                hints={"cities": ["Kyoto"], "topics": ["museums"]})
    t = OfflineTeacher(task)
    pairs = t.pool(200, seed=0)
    cities = {Trip.model_validate_json(raw).city for _, raw in pairs}
    assert cities - t.invented - t.reshaped == {"Rome", "Lisbon", "Kyoto"}
    assert not any("museums" in text for text, _ in pairs)
    days = [Trip.model_validate_json(raw).days for _, raw in pairs]
    assert len(set(days)) > 2  # a number with a span varies, shaped like the examples' (1..6 here)
    assert all(1 <= d <= 6 and re.search(rf"\b{d}\b", text) for d, (text, _) in zip(days, pairs))


def test_init_template_task_gets_some_pairs(tmp_path):
    from schemabuild.task import load_task, write_template

    write_template("mood", tmp_path)
    task = load_task("mood", tmp_path)
    pairs = OfflineTeacher(task).pool(5000, seed=0)
    assert 10 <= len(pairs) < 5000  # it says what it can do rather than padding
    for text, raw in pairs:
        out = task.validate_output(raw)
        assert out.subject is None or out.subject in text


def test_meeting_invite_lists_numbers_and_nulls_vary_and_stay_true():
    from schemabuild.task import load_task
    from tests.conftest import TASKS

    task = load_task("meeting_invite", TASKS)
    t = OfflineTeacher(task)
    pairs = asyncio.run(t.generate_inputs(task, 600, 0))
    outs = [task.validate_output(t.labels[x]) for x in pairs]
    lengths = {len(o.guests) for o in outs}
    longest = max(len(e.output.guests) for e in task.examples)
    assert set(range(1, longest + 3)) <= lengths  # lists longer than any example's
    assert {o.kind for o in outs} == {"meeting", "call", "lunch", "interview"}
    assert len({o.minutes for o in outs}) > 10 and all(o.minutes % 5 == 0 for o in outs)
    assert any(o.place is None and "room" not in x.lower() for o, x in zip(outs, pairs))
    for text, o in zip(pairs, outs):  # every copied value is in the text, in list order
        pos = 0
        for g in o.guests:
            pos = text.find(g.name, pos)
            assert pos >= 0, (text, g.name)
            assert g.team is None or g.team in text
        assert o.place is None or o.place in text
        assert str(o.minutes) in text or o.minutes in (30, 60)  # "half an hour", "an hour" keep their value
    cov = t.coverage()
    assert cov["rows"] == 600 and cov["list_lengths"]["guests"][-1] >= longest + 2
    assert cov["values"]["kind"] == ["call", "interview", "lunch", "meeting"] and not cov["values_missing"]
    assert cov["no_span"] == {"minutes": "2 of 8 examples"}
    assert "no span to align for minutes" in t.note()


def test_missing_enum_values_are_announced_and_no_cue_word_is_added(capsys):
    class Ticket(BaseModel):
        urgent: bool
        area: Literal["billing", "login", "other"]
        ref: Optional[str]

    task = Task(name="tickets", instructions="x", output=Ticket, examples=[
        Example("urgent: billing broke on order A-1234", Ticket(urgent=True, area="billing", ref="A-1234")),
        Example("cannot login since yesterday, please help", Ticket(urgent=False, area="login", ref=None)),
        Example("please check my billing for order A-7781", Ticket(urgent=False, area="billing", ref="A-7781")),
    ])
    t = OfflineTeacher(task)
    pairs = asyncio.run(t.generate_inputs(task, 300, 0))
    line = capsys.readouterr().err
    assert "area 2/3 values (none with other: add an example)" in line
    assert t.coverage()["values_missing"] == {"area": ["other"]}
    for text in pairs:
        out = Ticket.model_validate_json(t.labels[text])
        assert ("urgent" in text.lower()) == out.urgent  # only the example's own cue makes it urgent
        if out.ref is not None:
            assert out.ref in text and len(out.ref) == 6 and out.ref[:2].upper() == "A-"  # ids shaped like the examples'
    assert len({Ticket.model_validate_json(t.labels[x]).ref for x in pairs}) > 20
