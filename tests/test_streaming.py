"""Real token streaming over loopback: chunks leave as they are decoded, the openai client's streaming helpers
work unchanged, a client that leaves frees its slot, and a stream that fails its final check ends in an error."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from tests.serving import build_quick, running_server

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "billy play some Daft Punk"}]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return build_quick(tmp_path_factory.mktemp("quick"))


@pytest.fixture(scope="module")
def srv(quick):
    # A cold compile child can take seconds to start on a loaded machine; schemas here are quick to compile.
    with running_server([quick.task], [quick.model_dir], compile_timeout_s=120) as srv:
        yield srv


@pytest.fixture
def slow_steps(srv):
    """Every decode step takes at least 15 ms and is counted (so a test can tell when a chunk left)."""
    decoder = srv.served[0].decoder
    original, count = decoder.step, {"n": 0}

    def step(batch, joining=()):
        time.sleep(0.015)
        out = original(batch, joining)
        count["n"] += 1
        return out

    decoder.step = step
    yield count
    decoder.step = original


def events(response) -> list:
    """The data payloads of an SSE response, parsed ([DONE] kept as the string)."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def body(**extra) -> dict:
    return {"model": "quick_pick", "messages": MESSAGES, "stream": True, **extra}


def test_chunks_leave_as_they_are_decoded(srv, slow_steps):
    """The first content chunk reaches the client while decoding is still going on, one chunk per step."""
    fmt = {"type": "json_object"}  # an untrained model writes a long object: many steps
    whole = httpx.post(srv.url + CHAT, json={**body(max_tokens=40, response_format=fmt), "stream": False},
                       timeout=120).json()["choices"][0]["message"]["content"]
    seen_at, chunks = None, []
    with httpx.stream("POST", srv.url + CHAT, json=body(max_tokens=40, response_format=fmt,
                                                         stream_options={"include_usage": True}), timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            chunks.append(data if data == "[DONE]" else json.loads(data))
            if seen_at is None and data != "[DONE]" and chunks[-1]["choices"] \
                    and chunks[-1]["choices"][0]["delta"].get("content"):
                seen_at = slow_steps["n"]
    steps_total = slow_steps["n"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:-3]]
    assert all(contents) and len(contents) >= 5, contents
    assert "".join(contents) == whole
    assert seen_at is not None and seen_at < steps_total - 3, (seen_at, steps_total)
    assert chunks[-3]["choices"][0]["finish_reason"] in ("stop", "length") and chunks[-3]["choices"][0]["delta"] == {}
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["completion_tokens"] > 0
    assert chunks[-1] == "[DONE]"
    assert len({c["id"] for c in chunks[:-1]}) == 1


def test_openai_client_stream_and_parsed_stream_helper(srv, quick):
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    whole = client.chat.completions.create(model="quick_pick", messages=MESSAGES).choices[0].message.content
    chunks = list(client.chat.completions.create(model="quick_pick", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "stop"
    Pick = quick.task.output
    with client.beta.chat.completions.stream(model="quick_pick", messages=MESSAGES, response_format=Pick) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "content.delta" in kinds and "content.done" in kinds
    parsed = final.choices[0].message.parsed
    assert isinstance(parsed, Pick) and parsed.model_dump() == Pick.model_validate_json(whole).model_dump()


def test_a_client_that_leaves_cancels_its_sequence(srv, slow_steps):
    engine = srv.served[0].engine
    before = engine.stats()
    long = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}, "minItems": 100}},
            "required": ["a"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "long", "schema": long}}  # hundreds of tokens at least
    with httpx.stream("POST", srv.url + CHAT, json=body(max_tokens=1000, response_format=fmt), timeout=120) as r:
        for line in r.iter_lines():
            chunk = json.loads(line[len("data: "):]) if line.startswith("data: {") else {}
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                break  # one real token arrived: leave
    for _ in range(400):
        stats = engine.stats()
        if stats["cancelled"] > before["cancelled"] and stats["rows_running"] == 0:
            break
        time.sleep(0.01)
    assert stats["cancelled"] == before["cancelled"] + 1 and stats["rows_running"] == 0
    assert stats["tokens_in_flight"] == 0
    assert slow_steps["n"] < 200  # dropped within a few steps, not decoded to max_tokens
    assert httpx.post(srv.url + CHAT, json={**body(), "stream": False}, timeout=60).status_code == 200


def test_a_stream_whose_output_breaks_the_schema_ends_with_an_error_not_a_finish(srv, monkeypatch):
    import schemabuild.serve.serving

    monkeypatch.setattr(schemabuild.serve.serving, "output_violation", lambda schema, text: "$.tool: made up for the test")
    schema = {"type": "object", "properties": {"tool": {"enum": ["a", "b"]}}, "required": ["tool"],
              "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}}
    with httpx.stream("POST", srv.url + CHAT, json=body(max_tokens=30, response_format=fmt), timeout=120) as r:
        got = events(r)
    assert got[-1] == "[DONE]" and got[-2]["error"]["code"] == "schema_violation"
    assert not any(c.get("choices") and c["choices"][0]["finish_reason"] for c in got[:-1] if isinstance(c, dict))
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    with pytest.raises(openai.APIError, match="does not satisfy"):
        list(client.chat.completions.create(model="quick_pick", messages=MESSAGES, stream=True, max_tokens=30,
                                            response_format=fmt))


def test_stream_refusals_are_real_http_statuses(srv):
    r = httpx.post(srv.url + CHAT, json=body(max_tokens=99999), timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(srv.url + CHAT, json=body(response_format={"type": "json_schema", "json_schema": {
        "name": "bad", "schema": {"type": "foo"}}}), timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_schema"


def test_concurrent_streams_share_steps_and_each_gets_its_own_answer(srv, quick):
    texts = ["play jazz", "weather in Oslo now!", "timer 5 min", "thanks", "play rock", "rain tomorrow?"]
    alone = {t: httpx.post(srv.url + CHAT, json={"model": "quick_pick", "messages": [{"role": "user", "content": t}]},
                           timeout=60).json()["choices"][0]["message"]["content"] for t in texts}
    got: dict[str, str] = {}

    def run(t):
        with httpx.stream("POST", srv.url + CHAT, json={"model": "quick_pick", "stream": True,
                                                        "messages": [{"role": "user", "content": t}]},
                          timeout=120) as r:
            got[t] = "".join(c["choices"][0]["delta"].get("content") or "" for c in events(r)
                             if isinstance(c, dict) and c.get("choices"))

    threads = [threading.Thread(target=run, args=(t,)) for t in texts]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert got == alone
    for text in got.values():
        quick.task.validate_output(text)
