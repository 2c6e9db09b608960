"""The constrained decoder: grammar cache, batched KV-cached decoding, jump-forward, sampling, the Engine."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemabuild.contract import encode_prompt, grammar_schema, load_contract


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """(model, tokenizer, contract) of the untrained tiny tool_picker model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir), load_contract(tiny_model_dir)


@pytest.fixture(scope="module")
def decoder(tiny):
    from schemabuild.inference.decoder import Decoder

    model, tok, contract = tiny
    return Decoder(model, tok, contract["stop_ids"])


def prompts(tokenizer, task, texts):
    return [encode_prompt(tokenizer, task.instructions, t) for t in texts]


TEXTS = ["billy play some Daft Punk", "what's the weather in Paris tomorrow", "gif of a dancing cat",
         "thanks billy", "set a timer for 10 minutes and then tell me a very long story about it"]


# ---- grammar cache ---------------------------------------------------------------------------------

def test_grammar_compiled_once_per_schema(decoder, tool_picker):
    grammars = decoder.grammars
    schema = grammar_schema(tool_picker.output)
    first = grammars.compile(schema)
    assert grammars.compile(json.loads(json.dumps(schema))) is first
    other = grammars.compile({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert other is not first
    assert grammars.compile(None) is grammars.compile(None)


@pytest.mark.parametrize("schema, words", [
    ({"type": "foo"}, "foo"),
    ({"type": "object", "properties": 3}, "properties"),
    ({"$ref": "#/$defs/Missing"}, "Missing"),
    (["not", "an", "object"], "list"),
])
def test_bad_schema_is_a_grammar_error(decoder, schema, words):
    from schemabuild.errors import GrammarError

    with pytest.raises(GrammarError, match=words) as info:
        decoder.compile(schema)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


# ---- decoding --------------------------------------------------------------------------------------

def test_batch_equals_one_by_one(decoder, tiny, tool_picker):
    """Left-padded batching with ragged prompts and per-request budgets gives each request its solo output."""
    from schemabuild.inference.request import Request

    _, tok, _ = tiny
    schema = grammar_schema(tool_picker.output)
    reqs = [Request(p, schema, max_tokens=m) for p, m in zip(prompts(tok, tool_picker, TEXTS), [24, 8, 30, 3, 16])]
    batch = decoder.generate(reqs)
    solo = [decoder.generate([r])[0] for r in reqs]
    assert [r.text for r in batch] == [r.text for r in solo]
    assert [r.token_ids for r in batch] == [r.token_ids for r in solo]
    for req, res in zip(reqs, batch):
        assert res.completion_tokens == len(res.token_ids) <= req.max_tokens
        assert res.prompt_tokens == len(req.prompt_ids)
        assert len(res.token_logprobs) == len(res.token_ids)
        assert all(lp <= 1e-6 for lp in res.token_logprobs)
        assert res.finish_reason in ("stop", "length")
        if res.finish_reason == "length":
            assert res.completion_tokens == req.max_tokens
        assert res.text.startswith('{"tool":"')  # the grammar holds even for an untrained model
    assert batch[3].finish_reason == "length" and batch[3].completion_tokens == 3


def test_unconstrained_greedy_matches_hf_generate(decoder, tiny, tool_picker):
    """The owned KV-cache loop (batched, left-padded) computes what transformers' generate computes."""
    import torch

    from schemabuild.inference.request import Request

    model, tok, contract = tiny
    ps = prompts(tok, tool_picker, TEXTS[:3])
    ours = decoder.generate([Request(p, None, max_tokens=12, constrained=False) for p in ps])
    for p, res in zip(ps, ours):
        with torch.inference_mode():
            out = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False,
                                 eos_token_id=contract["stop_ids"], pad_token_id=tok.pad_token_id)
        assert res.token_ids == out[0, len(p):].tolist()


def test_jump_forward_feeds_forced_text_in_one_pass(tiny, tool_picker):
    """The opening `{"tool":"` is forced by the grammar: fewer forward passes than output tokens."""
    from schemabuild.inference.decoder import Decoder, Request

    model, tok, contract = tiny
    schema = grammar_schema(tool_picker.output)
    [p] = prompts(tok, tool_picker, TEXTS[:1])
    plain = Decoder(model, tok, contract["stop_ids"], jump_forward=False, speculate=False).generate(
        [Request(p, schema, max_tokens=12)])[0]
    jump = Decoder(model, tok, contract["stop_ids"], jump_forward=True, speculate=False).generate(
        [Request(p, schema, max_tokens=12)])[0]
    assert plain.forward_passes == plain.completion_tokens == 12
    assert jump.completion_tokens == 12
    assert jump.forward_passes < plain.forward_passes
    assert 0.0 in jump.token_logprobs  # forced tokens carry probability 1


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(decoder, tiny, tool_picker):
    from schemabuild.inference.request import Request

    _, tok, _ = tiny
    schema = grammar_schema(tool_picker.output)
    [p] = prompts(tok, tool_picker, TEXTS[1:2])
    greedy = decoder.generate([Request(p, schema, max_tokens=16)])[0]
    sampled = [Request(p, schema, max_tokens=16, temperature=1.5, seed=s) for s in range(6)]
    first = decoder.generate(sampled)
    again = decoder.generate(sampled[::-1])[::-1]  # other batch positions, same seeds
    assert [r.text for r in first] == [r.text for r in again]
    assert len({r.text for r in first}) > 1
    nucleus = decoder.generate([Request(p, schema, max_tokens=16, temperature=1.0, top_p=1e-9, seed=3)])[0]
    assert nucleus.text == greedy.text


def test_json_object_mode_and_unconstrained(decoder, tiny, tool_picker):
    from schemabuild.inference.request import Request

    _, tok, _ = tiny
    [p] = prompts(tok, tool_picker, TEXTS[2:3])
    free = decoder.generate([Request(p, None, max_tokens=20)])[0]
    assert free.text[:1] == "{"  # json_object means an object, never a bare array or scalar
    if free.finish_reason == "stop":
        assert isinstance(json.loads(free.text), dict)
    # sampled outputs too: every completed one is a compact JSON object
    sampled = decoder.generate([Request(p, None, max_tokens=48, temperature=1.5, seed=s) for s in range(8)])
    for r in sampled:
        assert r.text[:1] == "{"
        if r.finish_reason == "stop":
            assert isinstance(json.loads(r.text), dict)
    raw = decoder.generate([Request(p, {"type": "foo"}, max_tokens=5, constrained=False)])[0]
    assert raw.completion_tokens <= 5 and raw.forward_passes <= raw.completion_tokens  # fewer with kept drafts
    assert raw.token_ids == decoder.generate([Request(p, None, max_tokens=5, constrained=False)])[0].token_ids


def test_bad_requests_are_value_errors(decoder, tiny, tool_picker):
    from schemabuild.inference.request import Request

    _, tok, _ = tiny
    [p] = prompts(tok, tool_picker, TEXTS[:1])
    for bad, words in [(Request([], None), "prompt_ids"), (Request([10**7], None), "prompt_ids"), (Request(p, None, max_tokens=0), "max_tokens"),
                       (Request(p, None, temperature=-1), "temperature"), (Request(p, None, top_p=0), "top_p"),
                       (Request(p, None, adapter="nope"), "adapter")]:
        with pytest.raises(ValueError, match=words):
            decoder.generate([bad])


# ---- every completed output validates: generated schemas × random tiny models -------------------------

@pytest.fixture(scope="module")
def random_models(tmp_path_factory, tool_picker):
    """A very small tokenizer and three randomly initialised 1-layer models sharing it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from schemabuild.contract import end_of_turn
    from schemabuild.train.tiny import TinyConfig, build_tiny

    path = build_tiny(tool_picker, tmp_path_factory.mktemp("rand"), config=TinyConfig(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1))
    tok = AutoTokenizer.from_pretrained(path)
    config = LlamaConfig.from_pretrained(path)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
        with torch.no_grad():  # sharper random logits: outputs end sooner than with near-uniform ones
            model.lm_head.weight.mul_(8.0)
        models.append(model)
    return tok, models, end_of_turn(tok)[1]


LEAF = st.sampled_from([
    {"type": "string"}, {"type": "string", "maxLength": 4}, {"type": "integer"}, {"type": "number"},
    {"type": "boolean"}, {"enum": ["red", "green", "blue"]}, {"type": "integer", "minimum": 0, "maximum": 9},
    {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]},
    {"anyOf": [{"type": "integer"}, {"type": "null"}]},
])
NAMES = st.sampled_from(["a", "name", "count", "ok", "kind", "x_1", "items", "sub"])


def _obj(children):
    return st.dictionaries(NAMES, children, min_size=1, max_size=3).map(
        lambda props: {"type": "object", "properties": props})


SCHEMAS = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.builds(lambda s: {"type": "array", "items": s, "maxItems": 2}, inner),
        _obj(inner),
    ),
    max_leaves=5,
).map(lambda s: s if s.get("type") == "object" else {"type": "object", "properties": {"value": s}})


def test_completed_outputs_validate(random_models):
    from schemabuild.inference.decoder import Decoder, Request

    tok, models, stop_ids = random_models
    decoders = [Decoder(m, tok, stop_ids) for m in models]
    prompt = tok("<|im_start|>user\nmake json<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    seen = {"stop": 0, "length": 0}

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(schema=SCHEMAS, which=st.integers(0, 2), seed=st.integers(0, 2**16))
    def check(schema, which, seed):
        schema = grammar_schema(schema)
        reqs = [Request(prompt, schema, max_tokens=40, temperature=t, seed=seed) for t in (0.0, 1.0, 1.0)]
        reqs[2].seed = seed + 1
        for res in decoders[which].generate(reqs):
            seen[res.finish_reason] += 1
            assert res.completion_tokens <= 40
            if res.finish_reason == "stop":
                jsonschema.validate(json.loads(res.text), schema)
            else:
                assert res.completion_tokens == 40

    check()
    assert seen["stop"] > 0, seen


# ---- jump-forward equals plain constrained greedy on the gold set (trained model) ----------------------

@pytest.mark.slow
def test_jump_forward_equals_plain_greedy_on_gold_set(trained_run, tool_picker):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from schemabuild.inference.decoder import Decoder, Request
    from schemabuild.task import load_jsonl_examples
    from tests.conftest import EVALS

    model_dir = trained_run / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    stop_ids = load_contract(model_dir)["stop_ids"]
    gold = load_jsonl_examples(tool_picker, EVALS / "tool_picker.jsonl")
    schema = grammar_schema(tool_picker.output)
    reqs = [Request(p, schema, max_tokens=64) for p in prompts(tok, tool_picker, [ex.input for ex in gold])]
    plain = Decoder(model, tok, stop_ids, jump_forward=False, speculate=False).generate(reqs)
    jump = Decoder(model, tok, stop_ids, jump_forward=True).generate(reqs)  # and speculation (the default)
    assert [r.text for r in jump] == [r.text for r in plain]
    assert [r.finish_reason for r in jump] == [r.finish_reason for r in plain]
    assert sum(r.forward_passes for r in jump) < sum(r.forward_passes for r in plain)
    assert all(r.text.startswith('{"tool":"') for r in jump)


# ---- the Engine ------------------------------------------------------------------------------------

def test_engine_batches_concurrent_requests(decoder, tiny, tool_picker):
    from schemabuild.errors import GrammarError
    from schemabuild.inference.request import Request
    from schemabuild.serve.engine import Engine

    _, tok, _ = tiny
    schema = grammar_schema(tool_picker.output)
    reqs = [Request(p, schema, max_tokens=10) for p in prompts(tok, tool_picker, TEXTS * 2)]
    expected = [decoder.generate([r])[0].text for r in reqs]
    engine = Engine(decoder, max_batch=32, window_ms=50)
    engine.start()

    async def main():
        good = asyncio.gather(*(engine.submit(r) for r in reqs))
        bad = asyncio.ensure_future(engine.submit(Request(reqs[0].prompt_ids, {"type": "foo"})))
        results = await good
        with pytest.raises(GrammarError):
            await bad
        after = await engine.submit(reqs[0])  # the worker survived the bad request
        return results, after

    try:
        results, after = asyncio.run(main())
    finally:
        engine.stop()
    assert [r.text for r in results] == expected
    assert after.text == expected[0]
    stats = engine.stats()
    assert stats["requests"] == len(reqs) + 2 and stats["errors"] == 1
    assert stats["steps"] < sum(r.completion_tokens for r in results)  # rows shared steps
    assert max(stats["batch_sizes"]) > 1
    assert stats["completion_tokens"] == sum(r.completion_tokens for r in results) + after.completion_tokens
    assert stats["queue_depth"] == 0 and not stats["running"]


def test_rows_joining_a_running_batch_decode_exactly_as_alone(decoder, tiny, tool_picker):
    """Continuous batching: rows join a running batch at later steps and leave when done; every output is
    byte-identical to the request decoded alone (greedy), and the cache drops the columns no row uses."""
    from schemabuild.inference.kv import Batch
    from schemabuild.inference.request import Request

    _, tok, _ = tiny
    schema = grammar_schema(tool_picker.output)
    ps = prompts(tok, tool_picker, TEXTS)
    reqs = [Request(ps[0], None, max_tokens=30, constrained=False), Request(ps[1], schema, max_tokens=20),
            Request(ps[2], None, max_tokens=12), Request(ps[3], schema, max_tokens=3),
            Request(ps[4], None, max_tokens=25, constrained=False), Request(ps[0], schema, max_tokens=16)]
    alone = [decoder.generate([r])[0] for r in reqs]
    joins = {0: [0, 1], 2: [2], 3: [3], 7: [4], 20: [5]}  # step -> requests joining then
    batch, rows, sizes, widths, step = Batch(), {}, [], [], 0
    while step <= max(joins) or batch.rows:
        joining = joins.get(step, [])
        sizes.append(len(batch.rows) + len(joining))
        new, _ = decoder.step(batch, [reqs[i] for i in joining])
        rows.update(zip(joining, new))
        widths.append(0 if batch.mask is None else batch.mask.shape[1])
        step += 1
    got = [decoder.result(rows[i]) for i in range(len(reqs))]
    assert [r.token_ids for r in got] == [r.token_ids for r in alone]
    assert [r.text for r in got] == [r.text for r in alone]
    assert [r.finish_reason for r in got] == [r.finish_reason for r in alone]
    assert max(sizes) >= 4 and batch.cache is None and batch.tokens() == 0
    longest = max(len(r.prompt_ids) + r.max_tokens for r in reqs)
    assert max(widths) < longest + 64  # columns follow the rows in flight, not every prompt ever joined


def test_engine_lets_a_late_short_request_finish_before_an_early_long_one(decoder, tiny, tool_picker):
    from schemabuild.inference.request import Request
    from schemabuild.serve.engine import Engine

    _, tok, _ = tiny
    ps = prompts(tok, tool_picker, TEXTS)
    long = Request(ps[0], None, max_tokens=120, constrained=False)
    short = Request(ps[1], grammar_schema(tool_picker.output), max_tokens=6)
    expected = [decoder.generate([long])[0], decoder.generate([short])[0]]
    engine = Engine(decoder, max_batch=8, window_ms=0)
    order = []

    async def main():
        async def run(req, name):
            res = await engine.submit(req)
            order.append(name)
            return res

        first = asyncio.ensure_future(run(long, "long"))
        while engine.stats()["rows_running"] == 0:
            await asyncio.sleep(0.002)
        second = asyncio.ensure_future(run(short, "short"))
        return await first, await second

    try:
        results = asyncio.run(main())
    finally:
        engine.stop()
    assert order == ["short", "long"]
    assert [r.token_ids for r in results] == [r.token_ids for r in expected]
    assert max(engine.stats()["batch_sizes"]) == 2  # the short one joined the running batch


def test_engine_cancelled_request_leaves_the_batch_and_frees_its_tokens(decoder, tiny, tool_picker):
    from schemabuild.inference.request import Request
    from schemabuild.serve.engine import Engine

    _, tok, _ = tiny
    [p] = prompts(tok, tool_picker, TEXTS[:1])
    engine = Engine(decoder, max_batch=8, window_ms=0)

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.submit(Request(p, None, max_tokens=1000, constrained=False)), 0.3)
        for _ in range(500):
            if engine.stats()["rows_running"] == 0:
                break
            await asyncio.sleep(0.01)
        return engine.stats()

    try:
        stats = asyncio.run(main())
    finally:
        engine.stop()
    assert stats["cancelled"] == 1 and stats["rows_running"] == 0 and stats["tokens_in_flight"] == 0
    assert stats["completion_tokens"] == 0  # it never finished: dropped at a step, not decoded to the end


def test_engine_caps_tokens_in_flight(decoder, tiny, tool_picker):
    import threading

    from schemabuild.inference.request import Request
    from schemabuild.serve.engine import Engine, QueueFull

    _, tok, _ = tiny
    [p] = prompts(tok, tool_picker, TEXTS[:1])
    gate = threading.Event()
    original = decoder.step
    decoder.step = lambda batch, joining=(): (gate.wait(30), original(batch, joining))[1]
    engine = Engine(decoder, max_batch=8, window_ms=0, max_tokens_in_flight=len(p) + 50)

    async def main():
        big = asyncio.ensure_future(engine.submit(Request(p, None, max_tokens=500, constrained=False)))
        await asyncio.sleep(0.05)  # a lone request above the cap is still admitted
        assert engine.stats()["tokens_in_flight"] == len(p) + 500
        with pytest.raises(QueueFull) as info:
            await engine.submit(Request(p, None, max_tokens=2))
        assert info.value.code == "tokens_in_flight"
        gate.set()
        await big
        return await engine.submit(Request(p, None, max_tokens=2))  # admitted again once it finished

    try:
        small = asyncio.run(main())
    finally:
        gate.set()
        decoder.step = original
        engine.stop()
    assert small.completion_tokens == 2 and engine.stats()["tokens_in_flight"] == 0


def test_engine_queue_full(decoder, tiny, tool_picker):
    import threading

    from schemabuild.inference.request import Request
    from schemabuild.serve.engine import Engine, QueueFull

    _, tok, _ = tiny
    [p] = prompts(tok, tool_picker, TEXTS[:1])
    req = Request(p, None, max_tokens=2)
    gate = threading.Event()
    original = decoder.step
    decoder.step = lambda batch, joining=(): (gate.wait(30), original(batch, joining))[1]
    engine = Engine(decoder, max_batch=1, window_ms=0, max_queue=1)

    async def main():
        first = asyncio.ensure_future(engine.submit(req))
        # submit() starts the worker and queues in one step: once the queue is empty again, the worker holds it.
        while engine._thread is None or engine.stats()["queue_depth"] != 0:
            await asyncio.sleep(0.005)
        second = asyncio.ensure_future(engine.submit(req))
        await asyncio.sleep(0.01)
        assert engine.stats()["queue_depth"] == 1
        with pytest.raises(QueueFull):
            await engine.submit(req)
        gate.set()
        return await first, await second

    try:
        a, b = asyncio.run(main())
    finally:
        gate.set()
        decoder.step = original
        engine.stop()
    assert a.completion_tokens == b.completion_tokens == 2
