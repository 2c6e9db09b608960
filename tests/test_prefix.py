"""Prefix reuse: the KV of the prompt prefix every request of a task shares is computed once and reused, and every
answer stays byte-identical to decoding without reuse (alone, in a batch, joining a running batch, per adapter).
Mixed-adapter steps: rows of several LoRA adapters share one batch and answer as each adapter alone."""

from __future__ import annotations

import pytest

from schemabuild.inference.kv import Batch
from schemabuild.contract import encode_prompt, grammar_schema, load_contract, prompt_prefix, shared_prefix_len, \
    student_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["billy play some Daft Punk", "what's the weather in Paris tomorrow", "gif of a dancing cat",
         "thanks billy", "set a timer for 10 minutes and then tell me a very long story about it", "hi"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The untrained tiny model with sharper logits: near-uniform ones hide a wrong position or a wrong key."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
        for layer in model.model.layers:  # attention far from uniform: positions matter
            layer.self_attn.q_proj.weight.mul_(6.0)
            layer.self_attn.k_proj.weight.mul_(6.0)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir), load_contract(tiny_model_dir)


def requests(tok, instructions, texts, schema, **kw):
    """Requests carrying their shared prefix length, as the Predictor and the server build them."""
    from schemabuild.inference.request import Request

    prefix = prompt_prefix(tok, instructions)
    out = []
    for t in texts:
        ids = encode_prompt(tok, instructions, t)
        out.append(Request(ids, schema, prefix_len=shared_prefix_len(prefix, ids), **kw))
    return out


class Widths:
    """Records the input width of every forward pass of a model (a forward pre-hook; the model runs for real)."""

    def __init__(self, model):
        self.seen: list[tuple[int, int]] = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.seen.append(tuple(kwargs["input_ids"].shape))

    def close(self):
        self.handle.remove()


def joined(decoder, reqs, joins: dict) -> list:
    """Token ids of `reqs` decoded in one running batch, request i joining at the step `joins` names for it."""
    batch, rows, step = Batch(), {}, 0
    while step <= max(joins) or batch.rows:
        new, _ = decoder.step(batch, [reqs[i] for i in joins.get(step, [])])
        rows.update(zip(joins.get(step, []), new))
        step += 1
    assert batch.cache is None  # every row left, and its cache with it
    return [decoder.result(rows[i]).token_ids for i in range(len(reqs))]


def test_prompt_prefix_is_what_every_prompt_starts_with(tiny, tool_picker):
    _, tok, _ = tiny
    for instructions in (tool_picker.instructions, student_prompt(tool_picker)):
        prefix = prompt_prefix(tok, instructions)
        assert tok.decode(prefix).endswith("user\n")
        for text in TEXTS:
            ids = encode_prompt(tok, instructions, text)
            assert ids[: len(prefix)] == prefix and shared_prefix_len(prefix, ids) == len(prefix)
    prefix = prompt_prefix(tok, student_prompt(tool_picker))
    ids = encode_prompt(tok, student_prompt(tool_picker), "hi")
    assert shared_prefix_len(prefix[:-1] + [prefix[-1] + 1], ids) == 0  # ids that differ anywhere: no reuse
    assert shared_prefix_len(prefix, prefix) == 0  # nothing after the prefix: nothing to reuse it for
    assert shared_prefix_len(prefix, encode_prompt(tok, tool_picker.instructions, "hi")) == 0  # other instructions


def test_reuse_is_byte_identical_alone_and_in_batches(tiny, tool_picker):
    """Two prefixes of different lengths, a row without a prefix, ragged suffixes in one left-padded batch: token ids
    equal the full-prefill decoder's, alone and batched."""
    from schemabuild.inference.decoder import Decoder, Request

    model, tok, contract = tiny
    schema = grammar_schema(tool_picker.output)
    reqs = requests(tok, tool_picker.instructions, TEXTS, schema, max_tokens=20) \
        + requests(tok, "Pick one tool; reply in JSON.", TEXTS[:4], None, max_tokens=12, constrained=False) \
        + [Request(encode_prompt(tok, "other", TEXTS[0]), schema, max_tokens=16)]  # prefix_len 0
    assert all(r.prefix_len > 0 for r in reqs[:-1]) and reqs[-1].prefix_len == 0
    # Without speculation: drafts depend on the batch size (speculate.draft_limit), so alone and batched rows would
    # take different numbers of passes; prefix reuse with speculation is tested in test_speculate.py.
    plain = Decoder(model, tok, contract["stop_ids"], prefix_cache=0, speculate=False)
    reuse = Decoder(model, tok, contract["stop_ids"], speculate=False)
    expected = [plain.generate([r])[0] for r in reqs]
    widths = Widths(model)
    try:
        batched = reuse.generate(reqs)
        prefill = widths.seen[2]  # the two prefix passes, then the batch's prefill
        alone = [reuse.generate([r])[0] for r in reversed(reqs)][::-1]
    finally:
        widths.close()
    assert [r.token_ids for r in batched] == [r.token_ids for r in expected]
    assert [r.token_ids for r in alone] == [r.token_ids for r in expected]
    assert [r.finish_reason for r in alone] == [r.finish_reason for r in expected]
    assert [r.forward_passes for r in batched] == [r.forward_passes for r in expected]
    assert [r.prompt_tokens for r in batched] == [len(r.prompt_ids) for r in reqs]
    lengths = {tuple(r.prompt_ids[: r.prefix_len]): r.prefix_len for r in reqs[:-1]}
    assert len(set(lengths.values())) == 2  # left padding inside the prefixes too
    assert sorted(w for _, w in widths.seen[:2]) == sorted(lengths.values())
    longest_rest = max(len(r.prompt_ids) - r.prefix_len for r in reqs)
    assert prefill[0] == len(reqs) and prefill[1] < max(len(r.prompt_ids) for r in reqs[:-1])
    assert prefill[1] >= longest_rest  # (plus any jump-forward tokens)
    assert len(reuse.prefixes) == 2  # computed once each, then copied


def test_rows_joining_a_running_batch_with_reuse_decode_as_without(tiny, tool_picker):
    from schemabuild.inference.decoder import Decoder

    model, tok, contract = tiny
    schema = grammar_schema(tool_picker.output)
    reqs = requests(tok, tool_picker.instructions, TEXTS, schema, max_tokens=24) \
        + requests(tok, student_prompt(tool_picker), TEXTS[2:4], schema, max_tokens=30)
    plain = Decoder(model, tok, contract["stop_ids"], prefix_cache=0)
    reuse = Decoder(model, tok, contract["stop_ids"], prefix_cache=8)
    expected = [plain.generate([r])[0].token_ids for r in reqs]
    joins = {0: [0], 1: [1, 6], 3: [2, 3], 5: [4], 9: [5, 7]}
    assert joined(reuse, reqs, joins) == expected


def test_prefix_lru_is_bounded_and_switch_off_keeps_nothing(tiny, tool_picker):
    from schemabuild.inference.decoder import Decoder

    model, tok, contract = tiny
    schema = grammar_schema(tool_picker.output)
    small = Decoder(model, tok, contract["stop_ids"], prefix_cache=2)
    off = Decoder(model, tok, contract["stop_ids"], prefix_cache=0)
    reqs = [requests(tok, f"Task {i}. Reply with the JSON only.", TEXTS[:1], schema, max_tokens=8)[0] for i in range(3)]
    got = [small.generate([r])[0].token_ids for r in reqs]
    assert len(small.prefixes) == 2
    assert got == [off.generate([r])[0].token_ids for r in reqs]
    assert len(off.prefixes) == 0
    with pytest.raises(ValueError, match="prefix_len"):
        small.check(type(reqs[0])(reqs[0].prompt_ids, schema, prefix_len=len(reqs[0].prompt_ids) + 1))


@pytest.fixture(scope="module")
def two_adapters(tiny):
    """A PEFT model: the tiny model with two random LoRA adapters "task_a" and "task_b" (non-zero, so they differ)."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    model, tok, contract = tiny
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
                     init_lora_weights=False)
    peft = get_peft_model(copy.deepcopy(model), cfg, adapter_name="task_a")
    peft.add_adapter("task_b", cfg)
    return peft.eval(), tok, contract


def test_prefix_kv_is_kept_per_adapter(two_adapters, tool_picker):
    from schemabuild.inference.decoder import Decoder

    model, tok, contract = two_adapters
    schema = grammar_schema(tool_picker.output)
    reqs = []
    for adapter in ("task_a", "task_b", "task_a"):
        for r in requests(tok, tool_picker.instructions, TEXTS[:3], schema, max_tokens=16):
            r.adapter = adapter
            reqs.append(r)
    plain = Decoder(model, tok, contract["stop_ids"], prefix_cache=0, mixed_adapters=False)
    reuse = Decoder(model, tok, contract["stop_ids"], mixed_adapters=False)
    expected = [plain.generate([r])[0].token_ids for r in reqs]
    assert expected[:3] != expected[3:6]  # the adapters really differ
    assert [r.token_ids for r in reuse.generate(reqs)] == expected
    assert sorted(adapter for adapter, _ in reuse.prefixes.keys()) == ["task_a", "task_b"]  # same ids, two entries


def test_server_reuses_the_task_prefix_and_answers_as_without(tmp_path):
    """`schemabuild serve` with and without `--prefix-cache`: the same answers over real HTTP; the task's own prompt
    reuses its one prefix entry, a client's own system prompt gets none."""
    import httpx

    from tests.serving import build_quick, running_server

    quick = build_quick(tmp_path)
    bodies = [("/v1/tasks/quick_pick/predict", {"input": text}) for text in TEXTS[:3]] + [
        ("/v1/chat/completions", {"model": "quick_pick", "messages": [{"role": "user", "content": TEXTS[3]}]}),
        ("/v1/chat/completions", {"model": "quick_pick", "messages": [
            {"role": "system", "content": "Say which tool."}, {"role": "user", "content": TEXTS[4]}]})]
    answers, kept = [], []
    for size in (8, 0):
        with running_server([quick.task], [quick.model_dir], prefix_cache=size) as srv:
            got = []
            for path, body in bodies:
                r = httpx.post(srv.url + path, json=body, timeout=120)
                assert r.status_code == 200, r.text
                got.append(r.json().get("output") or r.json()["choices"][0]["message"]["content"])
            answers.append(got)
            [served] = srv.served
            kept.append([ids for _, ids in served.decoder.prefixes.keys()])
            assert served.model.prefix and srv.cfg.prefix_cache == size
    assert answers[0] == answers[1]
    assert kept[1] == [] and len(kept[0]) == 1 and list(kept[0][0]) == served.model.prefix


# ---- mixed-adapter steps ---------------------------------------------------------------------------

def test_rows_of_two_adapters_share_each_pass_and_answer_as_alone(two_adapters, tool_picker):
    """One batch, one forward pass per step for rows of both adapters (PEFT `adapter_names`), rows joining a running
    batch, prefix reuse on: token ids equal each request decoded alone with its adapter set (no reuse)."""
    from schemabuild.inference.decoder import Decoder

    model, tok, contract = two_adapters
    schema = grammar_schema(tool_picker.output)
    reqs = []
    for i, r in enumerate(requests(tok, tool_picker.instructions, TEXTS, schema, max_tokens=20)
                          + requests(tok, "Pick one tool; reply in JSON.", TEXTS[:4], None, max_tokens=12,
                                     constrained=False)):
        r.adapter = ("task_a", "task_b")[i % 2]
        reqs.append(r)
    grouped = Decoder(model, tok, contract["stop_ids"], prefix_cache=0, mixed_adapters=False)
    mixed = Decoder(model, tok, contract["stop_ids"], mixed_adapters=True)
    assert mixed.mixed and not grouped.mixed and not Decoder(model, tok, contract["stop_ids"]).mixed
    expected = [grouped.generate([r])[0].token_ids for r in reqs]
    widths = Widths(model)
    try:
        batched = mixed.generate(reqs)
    finally:
        widths.close()
    assert [r.token_ids for r in batched] == expected
    assert max(rows for rows, _ in widths.seen) == len(reqs)  # both adapters' rows in one pass
    assert sorted({adapter for adapter, _ in mixed.prefixes.keys()}) == ["task_a", "task_b"]

    joins = {0: [0, 1], 2: [2, 7], 4: [3, 4, 5], 9: [6, 8, 9]}
    assert joined(mixed, reqs, joins) == expected


def test_engine_serves_two_adapters_in_one_running_batch(two_adapters, tool_picker):
    import asyncio

    from schemabuild.inference.decoder import Decoder
    from schemabuild.serve.engine import Engine

    model, tok, contract = two_adapters
    schema = grammar_schema(tool_picker.output)
    reqs = requests(tok, tool_picker.instructions, TEXTS * 2, schema, max_tokens=16)
    for i, r in enumerate(reqs):
        r.adapter = ("task_a", "task_b")[i % 2]
    grouped = Decoder(model, tok, contract["stop_ids"], prefix_cache=0, mixed_adapters=False)
    expected = [grouped.generate([r])[0].text for r in reqs]
    engine = Engine(Decoder(model, tok, contract["stop_ids"], mixed_adapters=True), max_batch=32, window_ms=50)
    engine.start()

    async def main():
        return await asyncio.gather(*(engine.submit(r) for r in reqs))

    try:
        results = asyncio.run(main())
    finally:
        engine.stop()
    assert [r.text for r in results] == expected
    assert max(engine.stats()["batch_sizes"]) > len(reqs) // 2  # more rows in a step than one adapter has
