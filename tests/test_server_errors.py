"""A battery of malformed requests against the real server: each gets the right 4xx and an OpenAI-style error
body, nothing gets a 5xx, and a good request still answers correctly afterwards."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.serving import assert_error, build_quick, running_server

LIMIT = 40_000
CHAT = "/v1/chat/completions"
PREDICT = "/v1/tasks/quick_pick/predict"
USER = [{"role": "user", "content": "play some jazz"}]


def chat(**fields) -> dict:
    return {"model": "quick_pick", "messages": USER, **fields}


def schema_format(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


# (id, method, path, raw body bytes or a JSON value, status, code, param)
CASES = [
    ("malformed-json", "POST", CHAT, b'{"model": "tool_picker",', 400, "invalid_json", None),
    ("empty-body", "POST", CHAT, b"", 400, "invalid_json", None),
    ("body-is-a-list", "POST", CHAT, b"[]", 400, "invalid_json", None),
    ("body-is-a-string", "POST", CHAT, b'"hello"', 400, "invalid_json", None),
    ("body-is-null", "POST", CHAT, b"null", 400, "invalid_json", None),
    ("body-not-utf8", "POST", CHAT, b"\xff\xfe\x00{", 400, "invalid_json", None),
    ("json-nested-too-deep", "POST", CHAT, b"[" * 5000 + b"]" * 5000, 400, "invalid_json", None),
    ("model-missing", "POST", CHAT, {"messages": USER}, 400, "invalid_value", "model"),
    ("model-not-a-string", "POST", CHAT, {"model": 5, "messages": USER}, 400, "invalid_value", "model"),
    ("model-empty", "POST", CHAT, {"model": "", "messages": USER}, 400, "invalid_value", "model"),
    ("model-unknown", "POST", CHAT, {"model": "gpt-4o", "messages": USER}, 404, "model_not_found", "model"),
    ("messages-missing", "POST", CHAT, {"model": "quick_pick"}, 400, "invalid_value", "messages"),
    ("messages-empty", "POST", CHAT, chat(messages=[]), 400, "invalid_value", "messages"),
    ("messages-a-string", "POST", CHAT, chat(messages="play jazz"), 400, "invalid_value", "messages"),
    ("message-not-an-object", "POST", CHAT, chat(messages=["play jazz"]), 400, "invalid_value", "messages[0]"),
    ("role-missing", "POST", CHAT, chat(messages=[{"content": "hi"}]), 400, "invalid_value", "messages[0].role"),
    ("role-unknown", "POST", CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), 400, "invalid_value",
     "messages[0].role"),
    ("role-tool", "POST", CHAT, chat(messages=[{"role": "tool", "content": "hi"}]), 400, "invalid_value",
     "messages[0].role"),
    ("content-a-number", "POST", CHAT, chat(messages=[{"role": "user", "content": 42}]), 400, "invalid_value",
     "messages[0].content"),
    ("content-image-part", "POST", CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]}]), 400, "invalid_value", None),
    ("content-empty", "POST", CHAT, chat(messages=[{"role": "user", "content": "  "}]), 400, "invalid_value",
     "messages[0].content"),
    ("no-user-message", "POST", CHAT, chat(messages=[{"role": "system", "content": "be brief"}]), 400,
     "invalid_value", "messages"),
    ("temperature-a-string", "POST", CHAT, chat(temperature="hot"), 400, "invalid_value", "temperature"),
    ("temperature-negative", "POST", CHAT, chat(temperature=-1), 400, "invalid_value", "temperature"),
    ("temperature-too-high", "POST", CHAT, chat(temperature=5), 400, "invalid_value", "temperature"),
    ("top-p-zero", "POST", CHAT, chat(top_p=0), 400, "invalid_value", "top_p"),
    ("max-tokens-zero", "POST", CHAT, chat(max_tokens=0), 400, "invalid_value", "max_tokens"),
    ("max-tokens-a-string", "POST", CHAT, chat(max_tokens="10"), 400, "invalid_value", "max_tokens"),
    ("max-tokens-a-bool", "POST", CHAT, chat(max_tokens=True), 400, "invalid_value", "max_tokens"),
    ("max-tokens-above-cap", "POST", CHAT, chat(max_tokens=10**9), 400, "max_tokens_too_large", "max_tokens"),
    ("max-tokens-disagree", "POST", CHAT, chat(max_tokens=10, max_completion_tokens=20), 400, "invalid_value",
     "max_tokens"),
    ("seed-a-string", "POST", CHAT, chat(seed="abc"), 400, "invalid_value", "seed"),
    ("n-two", "POST", CHAT, chat(n=2), 400, "unsupported_value", "n"),
    ("stop-given", "POST", CHAT, chat(stop=["}"]), 400, "unsupported_value", "stop"),
    ("tools-given", "POST", CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400,
     "unsupported_value", "tools"),
    ("stream-not-bool", "POST", CHAT, chat(stream="yes"), 400, "invalid_value", "stream"),
    ("response-format-a-string", "POST", CHAT, chat(response_format="json"), 400, "invalid_value", "response_format"),
    ("response-format-unknown-type", "POST", CHAT, chat(response_format={"type": "xml"}), 400, "invalid_value",
     "response_format.type"),
    ("json-schema-missing", "POST", CHAT, chat(response_format={"type": "json_schema"}), 400, "invalid_schema",
     "response_format.json_schema.schema"),
    ("json-schema-not-an-object", "POST", CHAT, chat(response_format=schema_format([1, 2])), 400, "invalid_value",
     "response_format.json_schema.schema"),
    ("json-schema-bad-type", "POST", CHAT, chat(response_format=schema_format({"type": "strng"})), 400,
     "invalid_schema", "response_format.json_schema.schema"),
    ("json-schema-bad-required", "POST", CHAT, chat(response_format=schema_format(
        {"type": "object", "required": "tool"})), 400, "invalid_schema", "response_format.json_schema.schema"),
    ("json-schema-dangling-ref", "POST", CHAT, chat(response_format=schema_format(
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})), 400, "invalid_schema",
     "response_format.json_schema.schema"),
    ("json-schema-nested-too-deep", "POST", CHAT, None, 400, "invalid_schema", None),  # built below
    ("prompt-longer-than-context", "POST", PREDICT, {"input": "play jazz " * 3000}, 400, "context_length_exceeded",
     "input"),
    ("body-too-large", "POST", CHAT, chat(messages=[{"role": "user", "content": "x" * (LIMIT + 1)}]), 413,
     "request_too_large", None),
    ("wrong-method", "GET", CHAT, None, 405, "method_not_allowed", None),
    ("unknown-route", "POST", "/v1/completions", chat(), 404, "not_found", None),
    ("predict-unknown-task", "POST", "/v1/tasks/nope/predict", {"input": "hi"}, 404, "model_not_found", "task"),
    ("predict-input-missing", "POST", PREDICT, {"text": "hi"}, 400, "invalid_value", "input"),
    ("predict-input-a-number", "POST", PREDICT, {"input": 5}, 400, "invalid_value", "input"),
    ("predict-input-empty", "POST", PREDICT, {"input": ""}, 400, "invalid_value", "input"),
    ("predict-max-tokens-negative", "POST", PREDICT, {"input": "hi", "max_tokens": -3}, 400, "invalid_value",
     "max_tokens"),
    ("predict-malformed-json", "POST", PREDICT, b"{input: hi}", 400, "invalid_json", None),
]


def _deep_schema_body(depth: int) -> bytes:
    """A chat body whose json_schema nests `depth` objects (written as text: too deep for json.dumps)."""
    schema = '{"type":"object","properties":{"a":' * depth + '{"type":"string"}' + "}}" * depth
    return ('{"model":"quick_pick","messages":[{"role":"user","content":"hi"}],'
            '"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":%s}}}' % schema).encode()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return build_quick(tmp_path_factory.mktemp("quick"))


@pytest.fixture(scope="module")
def server(quick):
    with running_server([quick.task], [quick.model_dir], max_body_bytes=LIMIT, max_tokens_cap=512) as srv:
        yield srv


def send(url: str, method: str, path: str, body) -> httpx.Response:
    if body is None:
        return httpx.request(method, url + path, timeout=120)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.request(method, url + path, content=content, headers={"content-type": "application/json"},
                         timeout=120)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_a_4xx_with_an_openai_error_body(server, case):
    name, method, path, body, status, code, param = case
    if name == "json-schema-nested-too-deep":
        body = _deep_schema_body(350)
        assert len(body) < LIMIT
    err = assert_error(send(server.url, method, path, body), status, code)
    if param is not None:
        assert err["param"] == param, err
        assert param.split("[")[0].split(".")[0] in err["message"], err


def test_the_battery_is_large_enough():
    assert len({c[0] for c in CASES}) == len(CASES) >= 30


def test_chunked_body_over_the_limit_is_refused(server):
    def chunks():
        for _ in range(LIMIT // 1000 + 2):
            yield b" " * 1000

    r = httpx.post(server.url + CHAT, content=chunks(), timeout=60)  # no Content-Length: chunked upload
    assert_error(r, 413, "request_too_large")


def test_the_server_still_answers_correctly_after_the_battery(server, quick):
    for case in CASES:  # run the whole battery again, back to back, then a good request
        if case[3] is not None:
            assert send(server.url, case[1], case[2], case[3]).status_code < 500
    r = httpx.post(server.url + CHAT, json=chat(), timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    quick.task.validate_output(r.json()["choices"][0]["message"]["content"])
    r = httpx.post(server.url + PREDICT, json={"input": "play some jazz"}, timeout=120)
    assert r.status_code == 200, r.text
    quick.task.validate_output(r.json()["output"])
    metrics = httpx.get(server.url + "/metrics").text
    assert not [line for line in metrics.splitlines() if 'status="5' in line]
