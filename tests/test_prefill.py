"""Chunked prefill: while other rows decode, a joining row's prompt is fed `prefill_chunk` tokens per step, in a
prefill pass after the decode pass, and the decoding rows keep taking a token every step. Greedy answers are
byte-identical with chunking on and off (long and short prompts, rows joining mid-decode, prefix reuse, speculation,
mixed adapters), in the Decoder and through the serving Engine."""

from __future__ import annotations

import math

import pytest

from schemabuild.contract import encode_prompt, grammar_schema
from tests.serving import quick  # noqa: F401 - a fixture
from tests.test_prefix import TEXTS, joined, requests, tiny, two_adapters  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("one_thread")

LONG = ("set a timer for 10 minutes and then tell me a very long story about it, with dragons and a castle by the sea "
        * 3)


def mixed_requests(tok, tool_picker, max_tokens: int = 24):
    """Short and long prompts: the task's own prompt (its prefix reused) and a client's system prompt (none reused)."""
    from schemabuild.inference.request import Request

    schema = grammar_schema(tool_picker.output)
    reqs = requests(tok, tool_picker.instructions, [TEXTS[0], LONG, TEXTS[2], LONG[:150]], schema,
                    max_tokens=max_tokens)
    reqs += [Request(encode_prompt(tok, "Say which tool, in JSON.", t), schema, max_tokens=max_tokens)
             for t in (LONG, TEXTS[4])]
    reqs += [Request(encode_prompt(tok, "Reply.", t), None, max_tokens=40, constrained=False) for t in ("hi", LONG)]
    return reqs


def test_chunked_prefill_answers_as_unchunked_with_rows_joining_mid_decode(tiny, tool_picker):
    from schemabuild.inference.decoder import Decoder

    model, tok, contract = tiny
    reqs = mixed_requests(tok, tool_picker)
    assert max(len(r.prompt_ids) - r.prefix_len for r in reqs) > 100 > min(len(r.prompt_ids) for r in reqs)
    alone = Decoder(model, tok, contract["stop_ids"], prefill_chunk=0)
    expected = [alone.generate([r])[0].token_ids for r in reqs]
    joins = {0: [0, 6], 1: [1, 2], 2: [3], 4: [4, 5, 7]}  # long ones join while others decode
    for spec in (True, False):
        off = Decoder(model, tok, contract["stop_ids"], prefill_chunk=0, speculate=spec)
        on = Decoder(model, tok, contract["stop_ids"], prefill_chunk=16, speculate=spec)
        assert joined(off, reqs, joins) == expected
        assert joined(on, reqs, joins) == expected
        assert off.prefills["cut"] == 0 < on.prefills["cut"]  # it did chunk, and off did not
        assert on.prefills["passes"] > off.prefills["passes"]
    together = [(r.token_ids, r.forward_passes) for r in on.generate(reqs)]
    assert together == [(r.token_ids, r.forward_passes) for r in off.generate(reqs)]  # nothing decoding: no chunks
    assert len(on.prefixes) == 1  # the task's prefix was reused by the chunked rows too


def test_decoding_rows_take_a_token_every_step_while_a_long_prompt_prefills(tiny):
    """A running row, then a long prompt joins: it stays in `batch.filling` for exactly ceil(prompt / chunk) steps,
    its KV growing one chunk a step, while the running row takes at least one token in every one of those steps."""
    from schemabuild.inference.decoder import Decoder
    from schemabuild.inference.kv import Batch
    from schemabuild.inference.request import Request

    model, tok, contract = tiny
    chunk = 16
    short = Request(encode_prompt(tok, "Reply.", "hi"), None, max_tokens=60, constrained=False)
    long = Request(encode_prompt(tok, "Reply.", LONG), None, max_tokens=8, constrained=False)
    decoder = Decoder(model, tok, contract["stop_ids"], prefill_chunk=chunk)
    batch = Batch()
    [a], _ = decoder.step(batch, [short])
    [b], _ = decoder.step(batch, [long])
    steps = math.ceil(len(long.prompt_ids) / chunk)
    assert steps >= 5 and b.n_seen == chunk and b in batch.filling.rows and b not in batch.rows
    seen = [(b.n_seen, len(a.ids))]
    while b not in batch.rows:
        before = len(a.ids)
        decoder.step(batch)
        assert len(a.ids) > before and a in batch.rows  # the running row took its step
        seen.append((b.n_seen, len(a.ids)))
    assert len(seen) == steps and batch.filling is None
    assert [n for n, _ in seen] == [min(chunk * (i + 1), len(long.prompt_ids)) for i in range(steps)]
    assert len(b.ids) >= 1 and b.passes == steps  # its first token came with the last chunk's pass
    assert decoder.prefills == {"passes": steps + 1, "cut": steps - 1}
    while batch.rows:
        decoder.step(batch)
    plain = Decoder(model, tok, contract["stop_ids"], prefill_chunk=0)
    assert [decoder.result(s).token_ids for s in (a, b)] == [r.token_ids for r in plain.generate([short, long])]


def test_a_cancelled_row_leaves_while_it_prefills(tiny):
    from schemabuild.inference.decoder import Decoder
    from schemabuild.inference.kv import Batch
    from schemabuild.inference.request import Request

    model, tok, contract = tiny
    decoder = Decoder(model, tok, contract["stop_ids"], prefill_chunk=8)
    batch = Batch()
    [a], _ = decoder.step(batch, [Request(encode_prompt(tok, "Reply.", "hi"), None, max_tokens=30, constrained=False)])
    [b, c], _ = decoder.step(batch, [Request(encode_prompt(tok, "Reply.", t), None, max_tokens=4, constrained=False)
                                     for t in (LONG, LONG[:60])])
    assert decoder.live(batch) == [a, b, c]
    decoder.drop(batch, [b])
    assert decoder.live(batch) == [a, c]
    decoder.drop(batch, [c])
    assert batch.filling is None and decoder.live(batch) == [a]
    while batch.rows:
        decoder.step(batch)


def test_mixed_adapter_rows_prefill_in_chunks_and_answer_as_alone(two_adapters, tool_picker):  # noqa: F811
    from schemabuild.inference.decoder import Decoder

    model, tok, contract = two_adapters
    reqs = mixed_requests(tok, tool_picker, max_tokens=16)
    for i, r in enumerate(reqs):
        r.adapter = ("task_a", "task_b")[i % 2]
    grouped = Decoder(model, tok, contract["stop_ids"], prefix_cache=0, mixed_adapters=False)
    expected = [grouped.generate([r])[0].token_ids for r in reqs]
    mixed = Decoder(model, tok, contract["stop_ids"], mixed_adapters=True, prefill_chunk=16)
    assert joined(mixed, reqs, {0: [0, 6], 1: [1, 2, 7], 3: [3, 4, 5]}) == expected
    assert mixed.prefills["cut"] > 0


def test_engine_keeps_decoding_a_running_request_while_a_long_one_prefills(tiny):
    """Through the serving Engine: a long prompt joins while a streaming request decodes; every step of its prefill
    also advanced the running request, and both answers equal decoding alone."""
    import asyncio

    from schemabuild.inference.decoder import Decoder
    from schemabuild.inference.request import Request
    from schemabuild.serve.engine import Engine

    model, tok, contract = tiny
    short = Request(encode_prompt(tok, "Reply.", "hi"), None, max_tokens=60, constrained=False)
    long = Request(encode_prompt(tok, "Say which tool.", LONG), None, max_tokens=12, constrained=False)
    expected = [r.token_ids for r in Decoder(model, tok, contract["stop_ids"]).generate([short, long])]
    decoder = Decoder(model, tok, contract["stop_ids"], prefill_chunk=16)
    records = []  # per step: (running row's tokens before, after, rows still prefilling after)
    step = decoder.step

    def recorded(batch, joining=()):
        rows = [r for r in batch.rows if r.req is short]
        before = len(rows[0].ids) if rows else None
        out = step(batch, joining)
        records.append((before, len(rows[0].ids) if rows else None, len(batch.filling.rows) if batch.filling else 0))
        return out

    decoder.step = recorded
    engine = Engine(decoder, window_ms=0)

    async def main():
        job = await engine.enqueue(short, stream=True)
        await job.deltas.get()  # it is decoding
        return await asyncio.gather(engine.wait(job), engine.submit(long))

    try:
        results = asyncio.run(main())
    finally:
        engine.stop()
    assert [r.token_ids for r in results] == expected
    filling = [(b, a) for b, a, n in records if n]
    assert len(filling) >= math.ceil(len(long.prompt_ids) / 16) - 1 >= 4
    assert all(b is not None and a > b for b, a in filling)  # the running row advanced in every one of those steps
    assert results[1].forward_passes > Decoder(model, tok, contract["stop_ids"]).generate([long])[0].forward_passes


def test_serve_sets_the_prefill_chunk(quick):  # noqa: F811
    from click.testing import CliRunner

    from schemabuild.cli import main
    from schemabuild.config import ConfigError
    from schemabuild.serve.app import ServeConfig, load_models

    [served] = load_models([quick.task], ServeConfig(device="cpu", prefill_chunk=24), model_dirs=[quick.model_dir])
    assert served.decoder.prefill_chunk == 24
    assert ServeConfig().prefill_chunk == 128
    with pytest.raises(ConfigError, match="--prefill-chunk"):
        ServeConfig(prefill_chunk=-1)
    assert "--prefill-chunk" in CliRunner().invoke(main, ["serve", "--help"]).output
