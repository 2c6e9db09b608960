"""Teachers against a real HTTP server (tests/fake_openai.py) with the real openai client."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest

from schemabuild.synth.cache import TeacherCache
from schemabuild.errors import TeacherError
from schemabuild.synth.api import OpenAITeacher
from schemabuild.synth.batch import BatchTeacher
from schemabuild.synth.protocol import BudgetExceeded, Labelled, parse_inputs, price_for
from schemabuild.synth.teachers import make_teacher
from tests.fake_openai import fake_openai  # noqa: F401  (the fixture)

TEXTS = ["play some jazz", "weather in Oslo", "thanks billy", "gif of a cat", "timer 5 min"]
OUTPUTS = [{"tool": "music.play", "query": "jazz"}, {"tool": "weather.forecast", "query": "Oslo"},
           {"tool": "no_tool", "query": None}, {"tool": "discord_post.gif", "query": "a cat"},
           {"tool": "timer.set", "query": "5 min"}]


@dataclasses.dataclass
class Cfg:
    """The SynthConfig fields the teachers read."""

    teacher_model: str = "gpt-4o-mini"
    concurrency: int = 4
    timeout: float = 5.0
    max_retries: int = 3
    budget_usd: float | None = None
    price_in: float | None = None
    price_out: float | None = None
    batch: bool = False
    batch_poll_s: float = 0.02
    seed: int = 0


@pytest.fixture
def server(fake_openai):  # noqa: F811
    for text, out in zip(TEXTS, OUTPUTS):
        fake_openai.answers[text] = out
    return fake_openai


def teacher(tmp_path, cls=OpenAITeacher, **cfg) -> OpenAITeacher:
    t = cls(Cfg(**cfg), TeacherCache(tmp_path / "cache.sqlite"))
    chat = t.chat if isinstance(t, BatchTeacher) else t
    chat.backoff_s = 0.02  # keep retry tests fast
    return t


def chat_calls(server) -> int:
    return server.counts["/v1/chat/completions"]


def test_label_sends_structured_output_request_and_counts_tokens(server, tmp_path, tool_picker):
    t = teacher(tmp_path)
    rows = asyncio.run(t.label(tool_picker, TEXTS))
    assert [r.input for r in rows] == TEXTS
    assert [json.loads(r.raw) for r in rows] == OUTPUTS
    assert all(r.error is None for r in rows)
    body = server.requests[0]["body"]
    assert body["messages"][0] == {"role": "system", "content": tool_picker.instructions}
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["tool", "query"]
    ledger = t.ledger()
    assert ledger["calls"] == 5 and ledger["cached_calls"] == 0
    assert ledger["prompt_tokens"] == 5 * 7 and ledger["completion_tokens"] == 5 * 5
    assert ledger["cost_usd"] == pytest.approx(5 * (7 * 0.15 + 5 * 0.60) / 1e6)
    assert ledger["budget_hit"] is False


def test_429_waits_at_least_retry_after(server, tmp_path, tool_picker):
    server.enqueue(status=429, headers={"Retry-After": "0.5"})
    t = teacher(tmp_path)
    start = time.monotonic()
    [row] = asyncio.run(t.label(tool_picker, TEXTS[:1]))
    assert time.monotonic() - start >= 0.5
    assert json.loads(row.raw) == OUTPUTS[0]
    assert chat_calls(server) == 2


def test_500_then_success(server, tmp_path, tool_picker):
    server.enqueue(status=500)
    [row] = asyncio.run(teacher(tmp_path).label(tool_picker, TEXTS[:1]))
    assert json.loads(row.raw) == OUTPUTS[0] and row.error is None
    assert chat_calls(server) == 2


def test_timeout_then_success(server, tmp_path, tool_picker):
    server.enqueue(delay=2.0)  # longer than the client's timeout
    [row] = asyncio.run(teacher(tmp_path, timeout=0.3).label(tool_picker, TEXTS[:1]))
    assert json.loads(row.raw) == OUTPUTS[0]
    assert chat_calls(server) == 2


def test_retries_exhausted_becomes_labelled_error(server, tmp_path, tool_picker):
    for _ in range(3):
        server.enqueue(status=503)
    t = teacher(tmp_path, max_retries=2, concurrency=1)
    rows = asyncio.run(t.label(tool_picker, TEXTS[:2]))
    assert rows[0] == Labelled(TEXTS[0], None, "HTTP 503 after 2 retries")
    assert json.loads(rows[1].raw) == OUTPUTS[1]
    assert chat_calls(server) == 4
    assert t.ledger()["failed_calls"] == 1 and t.ledger()["calls"] == 1 and t.ledger()["retries"] == 2


def test_malformed_and_schema_violating_answers_come_back_raw(server, tmp_path, tool_picker):
    t = teacher(tmp_path, concurrency=1)
    server.enqueue(content='{"tool": "music.play", "query"')
    server.enqueue(content='{"tool": "teleport", "query": 3}')
    rows = asyncio.run(t.label(tool_picker, TEXTS[:2]))
    assert [r.raw for r in rows] == ['{"tool": "music.play", "query"', '{"tool": "teleport", "query": 3}']
    assert all(r.error is None for r in rows)


def test_response_format_rejected_falls_back_to_extraction(server, tmp_path, tool_picker, capsys):
    server.reject_response_format = True
    server.responder = lambda body: ("Sure! Here it is:\n```json\n" + json.dumps(server.answers[body["messages"][-1]
                                     ["content"]]) + "\n```\nAnything else?")
    rows = asyncio.run(teacher(tmp_path, concurrency=1).label(tool_picker, TEXTS[:3]))
    assert [json.loads(r.raw) for r in rows] == OUTPUTS[:3]
    assert rows[0].raw == json.dumps(OUTPUTS[0])  # the object alone, prose and fences gone
    bodies = [r["body"] for r in server.requests]
    assert "response_format" in bodies[0] and all("response_format" not in b for b in bodies[1:])
    assert chat_calls(server) == 4  # one rejected call, then one per input: the fallback is remembered
    assert "rejects response_format" in capsys.readouterr().err
    # a rerun knows about the fallback from the cache and makes no call at all
    again = asyncio.run(teacher(tmp_path).label(tool_picker, TEXTS[:3]))
    assert [r.raw for r in again] == [r.raw for r in rows] and chat_calls(server) == 4


def test_rerun_with_same_settings_makes_zero_http_calls(server, tmp_path, tool_picker):
    first = teacher(tmp_path)
    inputs = asyncio.run(first.generate_inputs(tool_picker, 30, seed=1))
    rows = asyncio.run(first.label(tool_picker, TEXTS))
    scores = asyncio.run(first.judge(tool_picker, [(r.input, r.raw) for r in rows]))
    made = server.counts["total"]
    assert made == 2 + 5 + 5 and set(server.message_counts.values()) == {1}

    second = teacher(tmp_path)  # a new process would open the same cache file
    assert asyncio.run(second.generate_inputs(tool_picker, 30, seed=1)) == inputs
    assert [r.raw for r in asyncio.run(second.label(tool_picker, TEXTS))] == [r.raw for r in rows]
    assert asyncio.run(second.judge(tool_picker, [(r.input, r.raw) for r in rows])) == scores == [5.0] * 5
    assert server.counts["total"] == made
    ledger = second.ledger()
    assert ledger["calls"] == 0 and ledger["cached_calls"] == made and ledger["cost_usd"] == 0


def test_generate_inputs_dedups_and_varies_calls(server, tmp_path, tool_picker):
    example = tool_picker.examples[0].input
    server.responder = lambda body: json.dumps(
        {"inputs": [example, "same  one", "Same one", f"call {len(server.requests)}"]})
    got = asyncio.run(teacher(tmp_path).generate_inputs(tool_picker, 6, seed=0))
    norm = [" ".join(g.split()).casefold() for g in got]
    assert example not in got and len(got) == len(set(norm)) == 6
    assert norm.count("same one") == 1
    bodies = [r["body"] for r in server.requests]
    assert len({(b["temperature"], b["seed"]) for b in bodies}) == len(bodies) > 1
    assert all("Write exactly" in b["messages"][1]["content"] for b in bodies)
    assert parse_inputs('1. "hello there"\n2. set a timer') == ["hello there", "set a timer"]


def test_budget_cap_stops_with_budget_exceeded(server, tmp_path, tool_picker):
    # 12 tokens × $1000 per 1M = $0.012 per call: the 3rd call reaches $0.036 ≥ $0.03
    t = teacher(tmp_path, concurrency=1, budget_usd=0.03, price_in=1000.0, price_out=1000.0)
    with pytest.raises(BudgetExceeded) as info:
        asyncio.run(t.label(tool_picker, TEXTS))
    rows = info.value.results
    assert [r.raw is not None for r in rows] == [True, True, True, False, False]
    assert rows[3].error == "budget reached"
    assert chat_calls(server) == 3
    ledger = t.ledger()
    assert ledger["calls"] == 3 and ledger["budget_hit"] is True and ledger["budget_usd"] == 0.03
    assert ledger["cost_usd"] == pytest.approx(0.036)
    # cached answers are not charged again: a rerun under the same cap pays only for the 2 missing ones
    again = teacher(tmp_path, concurrency=1, budget_usd=0.03, price_in=1000.0, price_out=1000.0)
    assert [json.loads(r.raw) for r in asyncio.run(again.label(tool_picker, TEXTS))] == OUTPUTS
    assert again.ledger()["cached_calls"] == 3 and again.ledger()["cost_usd"] == pytest.approx(0.024)
    assert chat_calls(server) == 5


def test_bad_key_is_one_line_teacher_error(server, tmp_path, tool_picker):
    server.enqueue(status=401)
    with pytest.raises(TeacherError, match="HTTP 401.*OPENAI_API_KEY"):
        asyncio.run(teacher(tmp_path, concurrency=1).label(tool_picker, TEXTS[:3]))
    assert chat_calls(server) == 1  # no point asking again with the same key


def test_batch_upload_create_poll_merge_with_failed_lines(server, tmp_path, tool_picker):
    server.batch_polls = 3
    server.batch_fail = lambda line: "input too long" if line["custom_id"] == "req-1" else None
    t = teacher(tmp_path, BatchTeacher)
    rows = asyncio.run(t.label(tool_picker, TEXTS))
    assert rows[1].raw is None and rows[1].error == "batch line failed: HTTP 400: input too long"
    assert [json.loads(r.raw) for i, r in enumerate(rows) if i != 1] == OUTPUTS[:1] + OUTPUTS[2:]
    assert server.counts["/v1/files"] == 1 and server.counts["/v1/batches"] == 1
    [batch] = server.batches.values()
    assert batch["polls"] == 3 and batch["request_counts"] == {"total": 5, "completed": 4, "failed": 1}
    uploaded = [json.loads(x) for x in server.files[batch["input_file_id"]]["data"].decode().splitlines()]
    assert {u["url"] for u in uploaded} == {"/v1/chat/completions"} and len(uploaded) == 5
    assert uploaded[0]["body"]["response_format"]["json_schema"]["strict"] is True
    ledger = t.ledger()
    assert ledger["calls"] == 4 and ledger["failed_calls"] == 1
    assert ledger["cost_usd"] == pytest.approx(4 * 0.5 * (7 * 0.15 + 5 * 0.60) / 1e6)  # Batch API: half price
    # answers went into the per-call cache: the chat path reuses them without a request
    chat_rows = asyncio.run(teacher(tmp_path).label(tool_picker, [TEXTS[0], TEXTS[2]]))
    assert [json.loads(r.raw) for r in chat_rows] == [OUTPUTS[0], OUTPUTS[2]] and chat_calls(server) == 0


def test_batch_in_flight_is_resumed_not_recreated(server, tmp_path, tool_picker):
    server.batch_polls = 10_000  # never finishes while the first run polls
    first = teacher(tmp_path, BatchTeacher)

    async def interrupted():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(first.label(tool_picker, TEXTS), timeout=0.5)

    asyncio.run(interrupted())  # like a killed process: the batch id is already in the cache
    assert server.counts["/v1/batches"] == 1
    [batch] = server.batches.values()
    server.batch_polls = batch["polls"] + 2
    rows = asyncio.run(teacher(tmp_path, BatchTeacher).label(tool_picker, TEXTS))
    assert [json.loads(r.raw) for r in rows] == OUTPUTS
    assert server.counts["/v1/batches"] == 1 and server.counts["/v1/files"] == 1  # no second upload or create
    assert batch["status"] == "completed"


def test_expired_batch_fails_its_lines_and_the_rerun_starts_a_new_batch(server, tmp_path, tool_picker):
    server.batch_status = "expired"
    rows = asyncio.run(teacher(tmp_path, BatchTeacher).label(tool_picker, TEXTS[:2]))
    assert [r.error for r in rows] == ["batch line failed: batch expired"] * 2
    server.batch_status = "completed"
    rows = asyncio.run(teacher(tmp_path, BatchTeacher).label(tool_picker, TEXTS[:2]))
    assert [json.loads(r.raw) for r in rows] == OUTPUTS[:2]
    assert server.counts["/v1/batches"] == 2  # the expired batch is not resumed


def test_connection_refused_is_retried_then_reported(tmp_path, tool_picker, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    [row] = asyncio.run(teacher(tmp_path, max_retries=2).label(tool_picker, TEXTS[:1]))
    assert row == Labelled(TEXTS[0], None, "connection error after 2 retries")


def test_make_teacher_picks_from_environment(server, tmp_path, tool_picker, monkeypatch, capsys):
    t = make_teacher(tool_picker, Cfg(), tmp_path / "c.sqlite")
    assert isinstance(t, OpenAITeacher) and t.model == "gpt-4o-mini"
    assert f"gpt-4o-mini at {server.url}" in capsys.readouterr().err
    assert isinstance(make_teacher(tool_picker, Cfg(batch=True), tmp_path / "c.sqlite"), BatchTeacher)
    monkeypatch.delenv("OPENAI_API_KEY")  # a local server with only a base URL still gets the chat teacher
    local = make_teacher(tool_picker, Cfg(), tmp_path / "c.sqlite")
    assert local.name == "openai"
    asyncio.run(local.label(tool_picker, TEXTS[:1]))
    assert server.requests[-1]["authorization"] == "Bearer none"
    monkeypatch.delenv("OPENAI_BASE_URL")
    offline = make_teacher(tool_picker, Cfg(), tmp_path / "c.sqlite")
    assert offline.name == "offline" and "offline" in capsys.readouterr().err


def test_prices():
    assert price_for("gpt-4o-mini-2024-07-18")[:2] == (0.15, 0.60)
    assert price_for("gpt-4o-2024-08-06")[:2] == (2.50, 10.00)
    assert price_for("gpt-4.1-nano")[:2] == (0.10, 0.40)
    assert price_for("gpt-4o", price_out=1.0)[:2] == (2.50, 1.0)
    p_in, p_out, note = price_for("llama3.1:8b")
    assert (p_in, p_out) == (0.0, 0.0) and "--price-in" in note
