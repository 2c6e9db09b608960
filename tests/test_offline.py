"""The offline teacher: recombined pairs stay valid and consistently labelled, for any task shape."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Literal, Optional

from pydantic import BaseModel

from schemabuild import Example, Task
from schemabuild.synth.checks import Candidate, check_rows, normalize
from schemabuild.synth.clauses import clauses
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
    assert all(1 <= d <= 6 and (re.search(rf"\b{d}\b", text) or d in spelt_numbers(text))  # digits or in words
               for d, (text, _) in zip(days, pairs))


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
        # digits, or in words ("forty-five min"), or "half an hour" and "an hour", which keep their value
        assert str(o.minutes) in text or o.minutes in spelt_numbers(text) or o.minutes in (30, 60)
    cov = t.coverage()
    assert set(cov["kinds"]) >= {"example", "list", "added", "reordered"} and sum(cov["kinds"].values()) == 600
    assert "rows by kind: " in t.note() and "an integer in words" in t.note()
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


# English number words, written here independently of the generator's, to read back what it wrote
UNITS = {w: n for n, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                    "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
TENS = {w: 10 * n for n, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split(), 0) if n > 1}


def spelt_numbers(text: str) -> list[int]:
    """The numbers written in English words in text ("forty-five" -> 45; "one more thing" counts too)."""
    found = []
    for m in re.finditer(r"\b([a-z]+)(?:-([a-z]+))?\b", text.lower()):
        head, unit = m.group(1), m.group(2)
        if head in TENS and (unit is None or unit in UNITS and 0 < UNITS[unit] < 10):
            found.append(TENS[head] + (UNITS[unit] if unit else 0))
        elif head in UNITS and unit is None and head != "zero":
            found.append(UNITS[head])
    return found


def meeting_invite_teacher():
    from schemabuild.task import load_task
    from tests.conftest import TASKS

    task = load_task("meeting_invite", TASKS)
    return task, OfflineTeacher(task)


def test_integers_in_words_map_to_the_label_and_stay_a_minority():
    task, t = meeting_invite_teacher()
    pairs = t.pool(800, seed=0)
    spelt = [(x, task.validate_output(raw)) for x, raw in pairs if t.row_kinds[x].endswith(" in words")]
    assert len(pairs) == 800 and 0.03 * len(pairs) < len(spelt) < 0.2 * len(pairs)
    assert t.kinds["in words"] == len(spelt)
    for text, out in spelt:
        assert out.minutes in spelt_numbers(text), text  # the words say the label's integer
        assert not re.search(rf"\b{out.minutes}\b", text)  # and the digits are gone
    digits = [x for x, raw in pairs if re.search(rf"\b{task.validate_output(raw).minutes}\b", x)]
    assert len(digits) > 3 * len(spelt)  # digits stay the common form, as the examples write them


class Basket(BaseModel):
    items: list[str]
    shop: Optional[str]
    rush: bool


def basket_task() -> Task:
    return Task(name="basket", instructions="x", output=Basket, examples=[
        Example("get me apples. also add pears, cheers", Basket(items=["apples", "pears"], shop=None, rush=False)),
        Example("quickly, buy milk at Corner Mart", Basket(items=["milk"], shop="Corner Mart", rush=True)),
        Example("need bread and jam from Green Grocer, asap", Basket(items=["bread", "jam"], shop="Green Grocer", rush=True)),
        Example("pick up eggs, no hurry", Basket(items=["eggs"], shop=None, rush=False)),
    ])


def test_clauses_never_split_a_list_at_its_separators_nor_an_item_or_brackets():
    parts = ["grab ", ("items", 0), ", ", ("items", 1), " and ", ("items", 2), ", thanks. see you"]
    assert [(body, d) for body, d in clauses(parts)] == [
        (["grab ", ("items", 0), ", ", ("items", 1), " and ", ("items", 2), ""], ", "), (["thanks"], ". "), (["see you"], "")]
    parts = ["with ", ("g", 0, "name"), " (", ("g", 0, "team"), "), ", ("g", 1, "name"), ", ", ("g", 1, "team"),
             ", an hour (or so, maybe)"]
    assert [d for _, d in clauses(parts)] == [", ", ""]  # not inside an item (name, team) nor inside brackets


def test_reordered_clauses_keep_slots_whole_and_lists_in_text_order():
    task = basket_task()
    t = OfflineTeacher(task)
    moved = [c for v in t.spliced.values() for c in v if c.kind == "reordered"]
    assert moved and t.derived["reordered"] == len(moved)
    # "also add <pears>" moved before "get me <apples>": the list follows the text, pears first
    swapped = [c for c in moved if c.example == 0 and c.parts[0].startswith("also add")]
    assert swapped and all(c.base["items"] == ["pears", "apples"] for c in swapped), [c.parts for c in moved]
    pairs = t.pool(300, seed=0)
    rows = [(x, Basket.model_validate_json(raw)) for x, raw in pairs if t.row_kinds[x].startswith("reordered")]
    assert rows
    for text, out in rows:
        at = [re.search(rf"\b{re.escape(item)}\b", text) for item in out.items]
        assert all(at), (text, out)
        assert [m.start() for m in at] == sorted(m.start() for m in at), (text, out)  # label order = text order
        assert out.shop is None or out.shop in text
    assert any(out.items[0] in text.split(".")[0] and len(out.items) == 2 and text.lower().startswith("also add")
               for text, out in rows)


def test_meeting_invite_reordered_rows_name_guests_in_label_order():
    task, t = meeting_invite_teacher()
    pairs = t.pool(800, seed=0)
    rows = [(x, task.validate_output(raw)) for x, raw in pairs if t.row_kinds[x].startswith("reordered")]
    assert 0.05 * len(pairs) < len(rows) < 0.35 * len(pairs)
    source = {e.input.split(",")[0] for e in task.examples}
    assert sum(not any(x.lower().startswith(s.lower()) for s in source) for x, _ in rows) > len(rows) / 2
    for text, out in rows:
        pos = -1
        for g in out.guests:
            nxt = text.find(g.name, pos + 1)
            assert nxt > pos, (text, out.guests)  # each guest named after the one before it
            pos = nxt
            assert g.team is None or g.team in text
        assert out.place is None or out.place in text


def test_an_optional_value_added_with_its_word_sets_the_field_and_nothing_else():
    task, t = meeting_invite_teacher()
    added = [c for v in t.spliced.values() for c in v if c.kind == "added"]
    assert added and t.derived["added"] == len(added)
    carrier_words = set().union(*(set(re.findall(r"[a-z']+", " ".join(p for p in c.parts if isinstance(p, str)).lower()))
                                  for c in t.carriers))
    for c in added:
        group = json.loads(c.group)
        assert group["place"] is None and c.base["place"] is not None and ("place",) in c.slots
        assert {k: c.base[k] for k in ("kind", "online")} == {k: group[k] for k in ("kind", "online")}
        k = c.parts.index(("place",))
        assert c.parts[k - 1].endswith((" in ", " at "))  # the word that introduces a place in the examples
        literal = " ".join(p for p in c.parts if isinstance(p, str)).lower()
        assert set(re.findall(r"[a-z']+", literal)) <= carrier_words  # no new word, so no new cue
    pairs = t.pool(800, seed=0)
    rows = [(x, task.validate_output(raw)) for x, raw in pairs if t.row_kinds[x].startswith("added")]
    assert 0.05 * len(pairs) < len(rows) < 0.3 * len(pairs)
    assert {o.kind for _, o in rows} >= {"call", "meeting"} and all(o.online for _, o in rows)  # the place-less ones
    for text, out in rows:
        assert out.place is not None and re.search(rf"\b(in|at) {re.escape(out.place)}", text, re.I), (text, out)
        assert all(g.name in text for g in out.guests)


def test_an_optional_value_is_added_only_where_the_validators_allow_it(tool_picker):
    t = OfflineTeacher(tool_picker)  # query is optional, but no_tool must keep it null: nothing is added
    assert not [c for v in t.spliced.values() for c in v if c.kind == "added"]
    t = OfflineTeacher(basket_task())
    added = [c for v in t.spliced.values() for c in v if c.kind == "added"]
    assert added and all(c.base["shop"] is not None and not json.loads(c.group)["shop"] for c in added)
    assert all(c.base["rush"] == json.loads(c.group)["rush"] for c in added)
