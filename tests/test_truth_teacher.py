"""The truth-knowing teacher: valid true labels, seeds that differ, held-out rows never served, real openai client."""

from __future__ import annotations

import json

from openai import OpenAI

from schemabuild.synth.protocol import generate_messages
from schemabuild.task import load_jsonl_examples, load_task
from tests.conftest import EVALS, TASKS
from tests.truth_teacher import TruthServer, write_rows


def test_rows_validate_and_seeds_differ():
    task = load_task("meeting_invite", TASKS)
    rows = write_rows("a", 200)
    for r in rows:
        out = task.validate_output(r["output"])
        for g in out.guests:  # names and teams are copied from the text
            assert g.name in r["input"] and (g.team is None or g.team in r["input"])
        assert out.place is None or out.place in r["input"]
    assert rows == write_rows("a", 200)
    assert not {r["input"] for r in rows} & {r["input"] for r in write_rows("b", 200)}
    assert {len(r["output"]["guests"]) for r in rows} >= {1, 2, 3, 4, 5}


def test_heldout_file_is_valid_and_never_served():
    task = load_task("meeting_invite", TASKS)
    heldout = load_jsonl_examples(task, EVALS / "meeting_invite.jsonl")
    assert len(heldout) >= 60
    texts = {e.input for e in heldout}
    with TruthServer("train", exclude=texts) as server:
        client = OpenAI(base_url=server.url, api_key="k")
        served = []
        for call in range(10):
            msgs = generate_messages(task, 20, 0, call)
            reply = client.chat.completions.create(model="m", messages=msgs, seed=call, temperature=0.9)
            served += json.loads(reply.choices[0].message.content)["inputs"]
        assert len(served) == 200 and not texts & set(served)
        text = served[3]
        label = client.chat.completions.create(
            model="m", messages=[{"role": "system", "content": task.instructions}, {"role": "user", "content": text}])
        assert json.loads(label.choices[0].message.content) == server.truth[text]
        assert task.validate_output(server.truth[text])
