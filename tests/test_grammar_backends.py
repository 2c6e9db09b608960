"""The two grammar backends (xgrammar, llguidance): the same greedy answers on task schemas, token for token, and the
same strictness (a schema the engine cannot enforce is refused, naming the keyword)."""

from __future__ import annotations

import json

import pytest

from schemabuild.contract import encode_prompt, grammar_schema, load_contract
from schemabuild.errors import GrammarError

pytestmark = pytest.mark.usefixtures("one_thread")

BACKENDS = ("xgrammar", "llguidance")
TEXTS = ["billy play some Daft Punk", "what's the weather in Paris tomorrow", "gif of a dancing cat",
         "thanks billy", "set a timer for 10 minutes", "search the web for cheap flights to Oslo"]
# Task-shaped schemas beyond tool_picker's own: nested objects, lists, numbers, booleans, optional values.
OTHER_TASK_SCHEMAS = [
    {"type": "object", "properties": {"label": {"enum": ["spam", "ham"]}, "score": {"type": "number"},
                                      "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}}},
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"anyOf": [
        {"type": "integer"}, {"type": "null"}]}, "address": {"type": "object", "properties": {
            "city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}, "ok": {"type": "boolean"}}},
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir), load_contract(tiny_model_dir)


@pytest.fixture(scope="module")
def decoders(tiny):
    from schemabuild.inference.decoder import Decoder

    model, tok, contract = tiny
    return {name: Decoder(model, tok, contract["stop_ids"], grammar_backend=name) for name in BACKENDS}


@pytest.mark.parametrize("jump_forward", [True, False])
@pytest.mark.parametrize("which", ["task"] + [str(i) for i in range(len(OTHER_TASK_SCHEMAS))])
def test_both_backends_finish_valid_answers_under_the_same_schema(decoders, tiny, tool_picker, which, jump_forward):
    """On an untrained model the two engines may differ (llguidance's masks keep forced text to its canonical tokens,
    xgrammar's allow other splits), so here: every finished answer of each engine validates. The same answers, byte
    for byte, are checked on a trained model below."""
    import jsonschema

    from schemabuild.inference.request import Request

    _, tok, _ = tiny
    schema = grammar_schema(tool_picker.output if which == "task" else OTHER_TASK_SCHEMAS[int(which)])
    reqs = [Request(encode_prompt(tok, tool_picker.instructions, t), schema, max_tokens=64) for t in TEXTS[:3]]
    reqs += [Request(reqs[0].prompt_ids, schema, max_tokens=64, temperature=1.0, seed=s) for s in range(3)]
    finished = 0
    for d in decoders.values():
        d.jump_forward = jump_forward
        try:
            results = d.generate(reqs)
        finally:
            d.jump_forward = True
        for r in results:
            assert r.completion_tokens <= 64
            if r.finish_reason == "stop":
                jsonschema.validate(json.loads(r.text), schema)
                finished += 1
    assert finished > 0 or which != "task"  # the task schema's short answers finish; the others may not in 64


def test_json_object_mode_gives_json_objects(decoders, tiny):
    from schemabuild.inference.request import Request

    _, tok, _ = tiny
    prompt = encode_prompt(tok, "make json", "anything")
    for r in decoders["llguidance"].generate([Request(prompt, None, max_tokens=40, temperature=1.0, seed=s)
                                              for s in range(4)]):
        if r.finish_reason == "stop":
            assert isinstance(json.loads(r.text), dict) and ": " not in r.text.replace('": "', "")


@pytest.mark.parametrize("schema, keyword", [
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "not": {"required": ["a"]}}, "not"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "dependencies": {"a": ["b"]}}, "dependencies"),
    ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
    ({"type": "foo"}, "foo"),
])
def test_llguidance_refuses_what_it_cannot_enforce_naming_it(decoders, schema, keyword):
    with pytest.raises(GrammarError, match=keyword) as info:
        decoders["llguidance"].compile(schema)
    assert "\n" not in str(info.value)


def test_unknown_backend_is_a_clear_error(tiny):
    from schemabuild.inference.decoder import Decoder

    model, tok, contract = tiny
    with pytest.raises(GrammarError, match="unknown grammar backend 'outlines'"):
        Decoder(model, tok, contract["stop_ids"], grammar_backend="outlines")


# ---- the server on llguidance ----------------------------------------------------------------------

def test_server_on_llguidance_answers_refuses_by_keyword_and_checks_outputs(tmp_path):
    import httpx
    import jsonschema

    from tests.serving import assert_error, build_quick, running_server

    quick = build_quick(tmp_path)
    chat = "/v1/chat/completions"

    def ask(schema, strict=True):
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": strict}}
        return httpx.post(srv.url + chat, json={"model": "quick_pick", "max_tokens": 60, "response_format": fmt,
                                                "messages": [{"role": "user", "content": "jazz"}]}, timeout=120)

    with running_server([quick.task], [quick.model_dir], grammar_backend="llguidance") as srv:
        assert srv.served[0].decoder.grammars.name == "llguidance"
        r = httpx.post(srv.url + "/v1/tasks/quick_pick/predict", json={"input": "play some jazz"}, timeout=120)
        assert r.status_code == 200, r.text
        quick.task.validate_output(r.json()["output"])
        # what the engine cannot enforce: a 400 naming the keyword (the walk's, or llguidance's own)
        for schema, word in (({"type": "object", "not": {"required": ["a"]}}, "not"),
                             ({"type": "object", "propertyNames": {"maxLength": 3}}, "propertyNames")):
            err = assert_error(ask(schema), 400, "invalid_schema")
            assert word in err["message"], err
        # dependencies: rewritten, compiled, and every finished answer checked against the schema as sent
        deps = {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "boolean"}},
                "dependencies": {"a": ["b"]}, "additionalProperties": False}
        r = ask(deps)
        assert r.status_code == 200, r.text
        if r.json()["choices"][0]["finish_reason"] == "stop":
            jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), deps)


# ---- a trained model, the gold inputs: the two engines answer the same ------------------------------

@pytest.mark.slow
def test_trained_model_answers_are_byte_identical_on_both_backends(trained_run, tool_picker):
    """A trained model (the task's 48 example inputs and the texts above): both engines give the same answers, byte
    for byte, with jump-forward on (the default)."""
    from schemabuild.predictor import Predictor

    texts = [ex.input for ex in tool_picker.examples] + TEXTS
    answers = {}
    for name in BACKENDS:
        p = Predictor.from_model_dir(tool_picker, trained_run / "model", device="cpu", grammar_backend=name)
        answers[name] = [(x.text, x.finish_reason) for x in p.predict_many(texts, progress=False)]
    assert answers["xgrammar"] == answers["llguidance"]
    assert sum(f == "stop" for _, f in answers["xgrammar"]) >= 0.9 * len(texts)
