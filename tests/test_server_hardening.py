"""Issue 11's cases against a real loopback server: hostile schemas, extreme numbers, bad Unicode, the compile
worker's limits, strict mode's promise, and a hypothesis fuzz of the chat route."""

from __future__ import annotations

import json
import threading
import time

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.serving import assert_error, quick, running_server  # noqa: F401  (quick: fixture)

pytestmark = pytest.mark.slow
CHAT = "/v1/chat/completions"
SCHEMA_PARAM = "response_format.json_schema.schema"


@pytest.fixture(scope="module", params=["xgrammar", "llguidance"])
def srv(quick, request):
    """The hostile battery runs on both grammar engines."""
    with running_server([quick.task], [quick.model_dir], max_tokens_cap=1_000_000, compile_timeout_s=2.0,
                        grammar_backend=request.param) as s:
        yield s


def chat_body(schema=None, strict=None, **extra) -> dict:
    body = {"model": "quick_pick", "messages": [{"role": "user", "content": "play jazz"}], "max_tokens": 48, **extra}
    if schema is not None:
        spec = {"name": "x", "schema": schema}
        if strict is not None:
            spec["strict"] = strict
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    return body


def post_raw(url: str, raw: bytes) -> httpx.Response:
    return httpx.post(url + CHAT, content=raw, headers={"content-type": "application/json"}, timeout=120)


def is_json_prefix(text: str) -> bool:
    """Whether `text` is the start of some JSON value (the schema-free JSON grammar accepts every character of it)."""
    import xgrammar as xgr

    grammar = xgr.GrammarCompiler(xgr.TokenizerInfo(["x"])).compile_json_schema("{}", any_whitespace=True)
    return xgr.GrammarMatcher(grammar, terminate_without_stop_token=True).accept_string(text)


def test_is_json_prefix_tells_cut_json_from_broken_text():
    assert all(is_json_prefix(t) for t in ['{"a": [1, 2', '{"a": tr', '"ab', '[{"x": 1.5e', '{"a": 1}'])
    assert not any(is_json_prefix(t) for t in ['{"a"}', ']', '{"a": 1}x', '{"a": tru}', "{'a'"])


def valid_or_cut(r: httpx.Response, schema: dict) -> None:
    """A 200 whose content is schema-valid JSON, or (cut at max_tokens) the start of JSON."""
    assert r.status_code == 200, r.text[:300]
    choice = r.json()["choices"][0]
    content = choice["message"]["content"]
    if choice["finish_reason"] == "stop":
        jsonschema.validate(json.loads(content), schema)
    else:
        assert choice["finish_reason"] == "length", choice
        assert is_json_prefix(content), f"cut output is not a prefix of JSON: {content[:200]!r}"


@pytest.mark.parametrize("schema, words", [
    ({"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]}, "finite instance"),
    ({"$ref": "#"}, "$ref"),
    # found by the fuzz: jsonschema itself recursed forever on the output check (a 500)
    ({"anyOf": [{"$ref": "#"}, {"type": "string"}]}, "leads back to itself"),
    ({"$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}},
      "type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}}, "leads back to itself"),
    ({"not": {}}, "not"),
    ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "allOf"),
    ({"type": "integer", "enum": ["a", "b"]}, "enum"),
    ({"type": "string", "pattern": "^(?=a)b$"}, "lookaround"),
    ({"type": "string", "pattern": "[a-z]{1,6000}"}, "repetition bound"),
    ({"type": "string", "enum": [f"v{i}" for i in range(10_000)]}, "limit"),
    # bench/hostile.py: each bound passed the walk, but the decode thread then spent minutes in accept_token
    # (cost growing with every character), so every later request with a grammar answered 504
    ({"type": "string", "pattern": "(([a-z]{1,999}){1,999}){1,999}"}, "nested repetition"),
    ({"enum": []}, "enum"),  # was refused naming "$ref"
])
def test_schemas_the_engine_cannot_honour_are_400_naming_the_keyword(srv, schema, words):
    t0 = time.monotonic()
    err = assert_error(httpx.post(srv.url + CHAT, json=chat_body(schema), timeout=60), 400, "invalid_schema",
                       SCHEMA_PARAM)
    assert words in err["message"]
    assert time.monotonic() - t0 < 5  # refused by the walk, before any compile


def test_recursive_schema_as_written_decodes_without_blowing_up(srv):
    schema = {"type": "object", "properties": {"child": {"$ref": "#"}}}  # the issue's crash, child optional
    r = httpx.post(srv.url + CHAT, json=chat_body(schema, max_tokens=64), timeout=120)
    valid_or_cut(r, schema)


def test_client_schema_keeps_its_meaning_and_quirks_are_normalized(srv):
    named = {"type": "object", "properties": {"properties": {"type": "boolean"}, "tool": {"enum": ["a", "a", "b"]}},
             "required": ["tool"]}
    valid_or_cut(httpx.post(srv.url + CHAT, json=chat_body(named), timeout=120), named)


def test_strict_false_reports_the_relaxed_keywords(srv):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "not": {"const": 3}}}, "required": ["n"]}
    assert_error(httpx.post(srv.url + CHAT, json=chat_body(schema), timeout=60), 400, "invalid_schema")
    r = httpx.post(srv.url + CHAT, json=chat_body(schema, strict=False), timeout=120)
    assert r.status_code in (200, 422), r.text  # 422 only if the output broke `not` (never a silent 200)
    assert r.headers["x-schemabuild-relaxed"] == "not"


@pytest.mark.parametrize("raw, param", [
    (b'{"model":"quick_pick","messages":[{"role":"user","content":"hi"}],"max_tokens":' + b"9" * 5001 + b"}",
     "max_tokens"),
    (b'{"model":"quick_pick","messages":[{"role":"user","content":"\\ud800"}]}', "messages[0].content"),
    (b'{"model":"quick_pick","messages":[{"role":"user","content":"hi"}],"temperature":1e-320}', "temperature"),
    (b'{"model":"quick_pick","messages":[{"role":"user","content":"hi"}],"temperature":1,"top_p":5e-324}', "top_p"),
    (b'{"model":"quick_pick","messages":[{"role":"user","content":"hi"}],"temperature":Infinity}', None),
    (b'{"model":"quick_pick","messages":[{"role":"user","content":"hi"}],"seed":1e400}', "seed"),
])
def test_extreme_numbers_and_bad_unicode_are_400_naming_the_param(srv, raw, param):
    assert_error(post_raw(srv.url, raw), 400, param=param)


def test_predict_gets_the_same_input_checks(srv):
    url = srv.url + "/v1/tasks/quick_pick/predict"
    for raw, param in ((b'{"input":"\\udc00x"}', "input"), (b'{"input":"hi","temperature":1e-320}', "temperature"),
                       (b'{"input":"hi","max_tokens":' + b"1" * 5001 + b"}", "max_tokens")):
        assert_error(httpx.post(url, content=raw, timeout=60), 400, param=param)


def test_max_tokens_above_the_context_is_capped_not_refused(srv):
    r = httpx.post(srv.url + CHAT, json=chat_body(max_tokens=900_000), timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["total_tokens"] <= srv.served[0].model.context


def test_a_slow_compile_is_refused_at_the_time_limit_cached_and_never_holds_up_others(srv):
    # Passes the walk (each bound within limits) but takes ~5 s of compile on one core, against a 2 s limit.
    slow = {"type": "object", "properties": {f"p{i}": {"type": "string", "pattern": "[a-z]{1,1000}"} for i in range(60)}}
    latencies, errors = [], []

    def normal_requests():
        for _ in range(5):
            t0 = time.perf_counter()
            r = httpx.post(srv.url + CHAT, json=chat_body(), timeout=60)
            latencies.append(time.perf_counter() - t0)
            errors.append(r.status_code)

    t0 = time.perf_counter()
    worker = threading.Thread(target=normal_requests)
    worker.start()
    if srv.cfg.grammar_backend == "llguidance":  # it compiles this in milliseconds: answered, not refused
        r = httpx.post(srv.url + CHAT, json=chat_body(slow), timeout=60)
        worker.join()
        assert r.status_code in (200, 422), r.text
        # Not bounded here (a known gap, BENCHMARKS.md "Grammar backends"): the answer's masks over 60
        # `[a-z]{1,1000}` lexers run on the decode thread, which slowed the normal requests sharing its steps
        # (3.3 s worst on the loaded 2-core machine).
        assert time.perf_counter() - t0 < 30 and errors == [200] * 5
        return
    err = assert_error(httpx.post(srv.url + CHAT, json=chat_body(slow), timeout=60), 400, "invalid_schema")
    first = time.perf_counter() - t0
    worker.join()
    assert "compile time limit" in err["message"] and 1.5 < first < 15
    assert errors == [200] * 5 and max(latencies) < 1.5  # the decode path never waited for the compile
    t1 = time.perf_counter()
    again = assert_error(httpx.post(srv.url + CHAT, json=chat_body(slow), timeout=60), 400, "invalid_schema")
    assert again["message"] == err["message"] and time.perf_counter() - t1 < 1.0  # the failure is cached
    stats = httpx.get(srv.url + "/metrics").text
    assert 'schemabuild_engine_grammar_timeouts{engine="quick_pick"} 1' in stats


def test_a_schema_violation_is_never_a_200_and_is_counted():
    from schemabuild.inference.request import Result
    from schemabuild.serve.errors import APIError
    from schemabuild.serve.metrics import Metrics
    from schemabuild.serve.serving import check_output

    class S:  # check_output reads only the task name
        task = type("T", (), {"name": "quick_pick"})

    metrics = Metrics()
    result = Result([1], '{"a":"x"}', "stop", [0.0], 1, 1, 1)
    with pytest.raises(APIError) as info:
        check_output(metrics, S, {"type": "object", "properties": {"a": {"type": "integer"}}}, result)
    assert info.value.status == 422 and info.value.code == "schema_violation" and "$.a" in info.value.message
    assert 'schemabuild_schema_violations_total{model="quick_pick"} 1' in metrics.render({})


# ---- fuzz ------------------------------------------------------------------------------------------

leaf = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "boolean", "null"])}),
    st.fixed_dictionaries({"type": st.just("string"), "maxLength": st.integers(0, 8)}),
    st.fixed_dictionaries({"type": st.just("integer"), "minimum": st.integers(-5, 5), "maximum": st.integers(-5, 5)}),
    st.fixed_dictionaries({"enum": st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=3)), min_size=1,
                                            max_size=4)}),
    st.fixed_dictionaries({"type": st.just("string"), "pattern": st.sampled_from(["^[a-c]{1,3}$", "(?!x)y", "a{1,99999}"])}),
    st.fixed_dictionaries({"not": st.just({})}),
    st.just({"$ref": "#"}),
    st.just(True),
)
schemas = st.recursive(leaf, lambda inner: st.one_of(
    st.fixed_dictionaries({"type": st.just("object"),
                           "properties": st.dictionaries(st.sampled_from(["a", "b", "properties", "c"]), inner,
                                                         max_size=3),
                           "required": st.lists(st.sampled_from(["a", "b", "zz"]), max_size=2, unique=True)}),
    st.fixed_dictionaries({"type": st.just("array"), "items": inner, "maxItems": st.integers(0, 3)}),
    st.fixed_dictionaries({"anyOf": st.lists(inner, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"allOf": st.lists(inner, min_size=1, max_size=2)}),
    st.fixed_dictionaries({"oneOf": st.lists(inner, min_size=1, max_size=2)}),
), max_leaves=6)
numbers = st.one_of(st.none(), st.integers(-2, 10**30), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([5e-324, 1e-320, 0.0, 1.0, 2**63, -1]))
bodies = st.fixed_dictionaries({
    "model": st.sampled_from(["quick_pick", "quick_pick", "nope", ""]),
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool"]),
                                                "content": st.text(max_size=20)}), max_size=3),
}, optional={"max_tokens": numbers, "temperature": numbers, "top_p": numbers, "seed": numbers,
             "strict": st.booleans(), "schema": schemas, "response_type": st.sampled_from(["json_object", "text", "x"])})


SEEN: dict[str, dict[str, int]] = {}
"""What the fuzz saw, per server (one per grammar engine): the /metrics check compares one server with its own count."""


def seen(srv) -> dict[str, int]:
    return SEEN.setdefault(srv.url, {"schema_200": 0, "4xx": 0, "422": 0})


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=bodies)
def test_fuzz_chat_no_5xx_and_every_200_is_valid(srv, body):
    body = dict(body)
    schema, strict, kind = body.pop("schema", None), body.pop("strict", None), body.pop("response_type", None)
    if isinstance(body.get("max_tokens"), int) and 0 < body["max_tokens"] > 64:
        body["max_tokens"] = 64  # keep the fuzz quick; huge values are covered above
    if schema is not None:
        spec = {"name": "f", "schema": schema, **({"strict": strict} if strict is not None else {})}
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif kind is not None:
        body["response_format"] = {"type": kind}
    raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    r = post_raw(srv.url, raw)
    assert r.status_code < 500, r.text[:300]
    seen(srv)["4xx"] += r.status_code >= 400
    if r.status_code == 200 and schema is not None and r.json()["choices"][0]["finish_reason"] == "stop":
        jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), schema)
        seen(srv)["schema_200"] += 1


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(schema=schemas, strict=st.sampled_from([None, True, False]))
def test_fuzz_response_format_schemas_no_5xx_and_every_200_is_valid(srv, schema, strict):
    r = httpx.post(srv.url + CHAT, json=chat_body(schema, strict=strict, max_tokens=32), timeout=120)
    assert r.status_code < 500, r.text[:300]
    assert r.status_code in ((200, 400, 422) if strict is False else (200, 400)), r.text[:300]  # strict: no violation
    seen(srv)["422"] += r.status_code == 422
    if r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "stop":
        jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), schema)
        seen(srv)["schema_200"] += 1


def test_the_server_still_answers_after_the_fuzz(srv, quick):
    fuzz = seen(srv)
    assert fuzz["schema_200"] >= 3 and fuzz["4xx"] >= 10, fuzz  # the fuzz reached both outcomes on this server
    r = httpx.post(srv.url + CHAT, json=chat_body(), timeout=60)
    assert r.status_code == 200
    quick.task.validate_output(r.json()["choices"][0]["message"]["content"])
    counted = [line for line in httpx.get(srv.url + "/metrics").text.splitlines()
               if line.startswith("schemabuild_schema_violations_total{")]
    assert sum(int(line.split()[-1]) for line in counted) == fuzz["422"]  # only relaxed (strict: false) requests


def test_a_lone_surrogate_in_a_schema_key_is_a_400_not_a_500(srv):
    # bench/hostile.py: the 400's message quoted the key, and rendering it failed (UnicodeEncodeError → 500)
    raw = ('{"model":"quick_pick","messages":[{"role":"user","content":"hi"}],"response_format":{"type":'
           '"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"\\ud800":{}}}}}}')
    err = assert_error(post_raw(srv.url, raw.encode()), 400, "invalid_value")
    assert "Unicode" in err["message"] and "\\ud800" in err["param"]
    assert httpx.post(srv.url + CHAT, json=chat_body(), timeout=60).status_code == 200


@pytest.mark.parametrize("schema, strict", [
    # nested allOf was merged one level only: the inner allOf (its enum) was compiled as ignored
    ({"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "integer", "allOf": [
        {"allOf": [{"type": "integer", "enum": ["a", 1]}]}, {"type": "integer", "minimum": 0}]}}, None),
    # strict false relaxed an overlapping oneOf into an empty anyOf (which let out an empty text)
    ({"type": "string", "oneOf": [{"format": "uri"}, {"maxLength": 11, "minLength": 2}]}, False),
])
def test_battery_schemas_answer_valid_json(srv, schema, strict):
    r = httpx.post(srv.url + CHAT, json=chat_body(schema, strict=strict), timeout=120)
    valid_or_cut(r, schema)
