"""Prompt-lookup speculation: drafts copied from the prompt, checked by the grammar, verified in one pass; every output
byte-identical to decoding without speculation (alone, batched, joining a running batch, sampled rows alongside), and
the cache keeps exactly the positions each row fed and kept."""

from __future__ import annotations

import pytest

from schemabuild.contract import encode_prompt, grammar_schema, load_contract
from schemabuild.inference.speculate import MAX_DRAFT

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["billy play some Daft Punk", "what's the weather in Paris tomorrow", "gif of a dancing cat", "thanks billy",
         "set a timer for 10 minutes and then tell me a very long story about it", "hi",
         "put on some kenji abbott", "show me a picture of the old lighthouse at dawn please",
         "search the web for cheap flights to lisbon in may", "can u find a youtube video of a cat playing piano",
         "post a gif of a sloth eating a cake", "how many legs does a spider have", "timer 25 min for the pizza",
         "weather for new york city this weekend", "play lofi beats to study to", "lol ok",
         "look up who won the world cup in 1998", "send an image of a golden retriever puppy in the snow"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The untrained tiny model with sharper logits (near-uniform ones would make near-ties, i.e. flaky argmaxes)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir), load_contract(tiny_model_dir)


QUERY = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
OPENING = '{"query":"'  # what the grammar forces before a QUERY answer's first free token
# Two fields: a message that pastes `","note":"` makes a draft token after which the grammar forces text.
PAIR = {"type": "object", "properties": {"query": {"type": "string"}, "note": {"type": "string"}},
        "required": ["query", "note"]}
PASTED = ['a cat","note":"in a hat', 'put on some kenji abbott","note":"loud please', 'x","note":"y']


def copying(model, tok, prompts: list[list[int]], bias: float = 30.0):
    """`model` pulled towards copying the message of its prompt into a QUERY answer: after the opening, the message's
    first token (keyed by the opening's position: prompts of different lengths start differently), then after token a
    the token that followed a in one of `prompts` (the last such pair wins: where messages share a token the copy can
    switch to another message, and a row's own draft is then partly rejected), and `"}` after a message's last token.
    A real forward pass underneath; only the logits are moved."""
    import torch

    vocab = model.config.vocab_size
    follow = torch.full((vocab,), -1, dtype=torch.long)
    for p in prompts:
        for a, b in zip(p, p[1:]):
            follow[a] = b
    close = tok.convert_tokens_to_ids('"}')
    assert isinstance(close, int) and close != tok.unk_token_id
    follow[torch.isin(follow, torch.tensor(tok.all_special_ids))] = close
    opening = tok(OPENING, add_special_tokens=False)["input_ids"]  # jump-forward may leave its last tokens to the model
    follow[opening[:-1]] = torch.tensor(opening[1:])
    user = tok.convert_tokens_to_ids("user")
    first = {len(p) + len(opening) - 1: p[p.index(user) + 2] for p in prompts}  # "user", "\n", then the message

    class Copying(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, input_ids, position_ids, logits_to_keep=1, **kwargs):
            out = self.inner(input_ids=input_ids, position_ids=position_ids, logits_to_keep=logits_to_keep, **kwargs)
            kept = out.logits.shape[1]
            nxt = follow[input_ids[:, -kept:]]
            at_open = torch.nonzero(input_ids[:, -kept:] == opening[-1]).tolist()
            for b, k in at_open:
                nxt[b, k] = first.get(int(position_ids[b, k - kept]), nxt[b, k])
            rows, cols = torch.nonzero(nxt >= 0, as_tuple=True)
            out.logits[rows, cols, nxt[rows, cols]] += bias
            return out

    return Copying().eval()


def decoders(model, tok, contract, backend="xgrammar"):
    from schemabuild.inference.decoder import Decoder

    return (Decoder(model, tok, contract["stop_ids"], speculate=True, grammar_backend=backend),
            Decoder(model, tok, contract["stop_ids"], speculate=False, grammar_backend=backend))


def same(got, want):
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert [r.text for r in got] == [r.text for r in want]
    assert [r.finish_reason for r in got] == [r.finish_reason for r in want]
    for a, b in zip(got, want):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)


def check_cache(batch):
    """Every live row's attended cache columns are exactly the positions it fed and kept; no stray column."""
    if not batch.rows:
        assert batch.cache is None
        return
    assert batch.cache.layers[0].keys.shape[2] == batch.mask.shape[1]
    for b, seq in enumerate(batch.rows):
        fed_not_seen = len(seq.pending) - len(seq.draft)  # the real tokens the next pass feeds
        assert seq.n_seen == len(seq.req.prompt_ids) + len(seq.ids) - fed_not_seen
        assert int(batch.mask[b].sum()) == seq.n_seen
        assert seq.pending[len(seq.pending) - len(seq.draft):] == seq.draft
    if len(batch.rows) == 1:
        assert bool(batch.mask.all())  # a lone row's rejected draft is cut off, not masked: the fast path stays


# ---- the draft --------------------------------------------------------------------------------------

def test_lookup_takes_the_longest_tail_at_its_last_occurrence():
    from schemabuild.inference.speculate import lookup

    prompt = [1, 2, 3, 9, 2, 3, 4, 5, 6, 2, 7]
    assert lookup(prompt, [8, 2, 3], 3) == [4, 5, 6]  # "2 3" (longest match) last seen before 4
    assert lookup(prompt, [1, 2, 3], 8) == [9, 2, 3, 4, 5, 6, 2, 7]  # the 3-gram beats the later "2 3"
    assert lookup(prompt, [2], 2) == [7]  # the last "2" with a token after it
    assert lookup(prompt, [7], 4) == []  # at the prompt's end: nothing follows
    assert lookup(prompt, [42], 4) == [] and lookup(prompt, [], 4) == []
    assert lookup(prompt, [42], 2, twin=5) == [6, 2]  # the last token's twin when nothing else matches
    assert lookup(prompt, [3, 4], 2, twin=5) == [5, 6]  # ... and only then


def test_space_twins_pair_words_with_and_without_a_leading_space():
    from schemabuild.inference.speculate import space_twins

    twins = space_twins([b"cats", b" cats", b"dog", b" ", b"", b" x", b"<|im_end|>"])
    assert twins == {0: 1, 1: 0}  # "dog" has no spaced twin, " x" no bare one; " " is not the twin of ""


def test_drafts_of_greedy_rows_within_grammar_stop_and_budget(tiny, tool_picker):
    from schemabuild.inference.decoder import Decoder
    from schemabuild.inference.request import Request

    model, tok, contract = tiny
    stops = contract["stop_ids"]
    decoder = Decoder(model, tok, stops)

    def propose(seq, _stops):
        return decoder.lookup.draft(seq, MAX_DRAFT)
    schema = grammar_schema(tool_picker.output)
    prompt = encode_prompt(tok, tool_picker.instructions, "play some kenji abbott")
    head = tok('{"tool":"music.play","query":"kenji', add_special_tokens=False)["input_ids"]
    rest = tok(" abbott", add_special_tokens=False)["input_ids"]

    def seq(temperature=0.0, max_tokens=64, constrained=True):
        s = decoder.sequence(Request(prompt, schema, max_tokens=max_tokens, temperature=temperature,
                                     constrained=constrained))
        for t in head:
            assert s.matcher is None or s.matcher.accept(t)
        s.ids = list(head)
        return s

    greedy = seq()
    draft = propose(greedy, stops)
    assert draft[: len(rest)] == rest  # the message's words after "kenji"
    assert not set(draft) & set(stops)  # the message ends at <|im_end|>: cut there
    assert greedy.matcher.accept(draft[0])  # the matcher was left where it was (the draft rolled back)
    free = propose(seq(constrained=False), stops)
    assert free == draft  # only the stop token cut it: the grammar accepts all of it
    assert propose(seq(temperature=0.7), stops) == []
    assert len(propose(seq(max_tokens=len(head) + 2), stops)) == 1  # room for one draft token and the model's own
    assert propose(seq(max_tokens=len(head) + 1), stops) == []

    # an answer's first word, without the space it has in the message: its twin is looked up
    q = decoder.sequence(Request(encode_prompt(tok, tool_picker.instructions, "billy play some kenji abbott"),
                                 grammar_schema(QUERY), max_tokens=64))
    q.ids = tok('{"query":"play', add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(q.ids[-1]) == "play" and q.ids[-1] not in q.req.prompt_ids
    for t in q.ids:
        assert q.matcher.accept(t)
    assert tok.decode(propose(q, stops)).startswith(" some kenji a")  # MAX_DRAFT tokens of it

    # a grammar that refuses part of the copy: the draft stops at the first token it refuses
    short = Request(prompt, {"type": "object", "properties": {"query": {"type": "string", "maxLength": 7}}},
                    max_tokens=64)
    s = decoder.sequence(short)
    s.ids = tok('{"query":"kenji', add_special_tokens=False)["input_ids"]
    for t in s.ids:
        assert s.matcher.accept(t)
    cut = propose(s, stops)
    assert 0 < len(cut) < len(draft) and draft[: len(cut)] == cut
    assert len("kenji" + tok.decode(cut)) == 7  # as far as maxLength allows


def test_drafts_shrink_as_the_batch_grows(tiny, tool_picker):
    from schemabuild.inference.kv import Batch
    from schemabuild.inference.speculate import PASS_SLOTS, draft_limit

    assert [draft_limit(n) for n in (1, 2, 4, 8, 9, 32)] == [MAX_DRAFT, 7, 3, 1, 0, 0]
    base, tok, contract = tiny
    spec, _ = decoders(copying(base, tok, [encode_prompt(tok, tool_picker.instructions, t) for t in TEXTS]), tok,
                       contract)
    for n in (2, 4, 12):
        reqs = requests(tok, tool_picker, TEXTS[:n], grammar_schema(QUERY), max_tokens=30)
        batch, widest, full = Batch(), 0, 0
        spec.step(batch, reqs)
        while batch.rows:
            longest = max(len(s.draft) for s in batch.rows)
            assert len(batch.rows) * (1 + longest) <= max(PASS_SLOTS, 1 + MAX_DRAFT)
            widest = max(widest, longest)
            full += len(batch.rows) >= 9  # no drafts at all: the invariant above
            spec.step(batch)
        assert widest > 0 and (full > 0) is (n >= 9)  # the 12 rows draft once enough of them finished


# ---- exactness ---------------------------------------------------------------------------------------

def requests(tok, task, texts, schema, **kw):
    """Requests with their shared prefix length, as the server builds them (so rows start from the prefix cache)."""
    from schemabuild.contract import prompt_prefix, shared_prefix_len
    from schemabuild.inference.request import Request

    prefix = prompt_prefix(tok, task.instructions)
    out = []
    for t in texts:
        ids = encode_prompt(tok, task.instructions, t)
        out.append(Request(ids, schema, prefix_len=shared_prefix_len(prefix, ids), **kw))
    assert all(r.prefix_len > 0 for r in out)
    return out


@pytest.mark.parametrize("backend", ["xgrammar", "llguidance"])
def test_speculation_gives_plain_greedy_outputs_in_fewer_passes(tiny, tool_picker, backend):
    """Many messages on a model that copies its prompt (drafts often kept, sometimes cut short, some followed by
    forced text): every output equals decoding without speculation, alone and all in one batch; the passes drop."""
    base, tok, contract = tiny
    texts = TEXTS if backend == "xgrammar" else TEXTS[::3]
    groups = [requests(tok, tool_picker, texts, grammar_schema(QUERY), max_tokens=40)
              + requests(tok, tool_picker, texts[:4], grammar_schema(tool_picker.output), max_tokens=24),
              requests(tok, tool_picker, PASTED, grammar_schema(PAIR), max_tokens=40)]
    for reqs in groups:
        model = copying(base, tok, [r.prompt_ids for r in reqs])
        spec, plain = decoders(model, tok, contract, backend)
        want = [plain.generate([r])[0] for r in reqs]
        got = [spec.generate([r])[0] for r in reqs]
        same(got, want)
        assert 0 < spec.drafts["kept"] < spec.drafts["fed"]  # drafts kept and drafts rejected both happened
        assert sum(r.forward_passes for r in got) < 0.9 * sum(r.forward_passes for r in want)
        assert sum(r.finish_reason == "stop" for r in want) >= 2
        assert plain.drafts == {}
        kept = spec.drafts["kept"]
        for i in range(0, len(reqs), 4):  # batched: rows draft, keep and reject different lengths in one pass
            same(spec.generate(reqs[i:i + 4]), want[i:i + 4])
        assert spec.drafts["kept"] > kept
        same(spec.generate(reqs), want)  # too many rows to draft
    assert any('","note":"' in r.text for r in want)  # the pasted text was copied through the forced key


def test_unconstrained_and_json_object_rows_speculate_exactly(tiny, tool_picker):
    base, tok, contract = tiny
    texts = TEXTS[:8]
    reqs = (requests(tok, tool_picker, texts, None, max_tokens=24)  # json_object
            + requests(tok, tool_picker, texts, None, max_tokens=24, constrained=False))
    model = copying(base, tok, [r.prompt_ids for r in reqs])
    spec, plain = decoders(model, tok, contract)
    for i in range(0, len(reqs), 2):
        same(spec.generate(reqs[i:i + 2]), plain.generate(reqs[i:i + 2]))
    assert spec.drafts["kept"] > 0


def test_sampled_rows_never_draft_and_sample_as_without_speculation(tiny, tool_picker):
    from schemabuild.inference.kv import Batch

    base, tok, contract = tiny
    greedy = requests(tok, tool_picker, TEXTS[:4], grammar_schema(QUERY), max_tokens=32)
    sampled = (requests(tok, tool_picker, TEXTS[:2], grammar_schema(tool_picker.output), max_tokens=32,
                        temperature=1.0, seed=7)
               + requests(tok, tool_picker, TEXTS[2:4], grammar_schema(QUERY), max_tokens=32, temperature=0.8,
                          top_p=0.9, seed=11))
    model = copying(base, tok, [r.prompt_ids for r in greedy])
    spec, plain = decoders(model, tok, contract)
    reqs = [r for pair in zip(greedy, sampled) for r in pair]  # interleaved in one batch
    batch, drafted = Batch(), 0
    new, _ = spec.step(batch, reqs)
    while batch.rows:
        assert all(not s.draft for s in batch.rows if s.req.temperature > 0)
        drafted += sum(bool(s.draft) for s in batch.rows)
        spec.step(batch)
    assert drafted > 0
    got = [spec.result(s) for s in new]
    want = plain.generate(reqs)
    same(got, want)
    assert spec.drafts["kept"] > 0  # the greedy rows beside them did speculate
    assert [r.forward_passes for r in got[1::2]] == [r.forward_passes for r in want[1::2]]
    assert sum(r.forward_passes for r in got[::2]) < sum(r.forward_passes for r in want[::2])


# ---- the cache and verification, with drafts chosen by the test ----------------------------------------

def test_drafts_kept_cut_or_rejected_at_once_leave_the_cache_exact(tiny, tool_picker, monkeypatch):
    """Drafts scripted per row (the true continuation, wrong at its first token, wrong after two, none, a sampled row)
    in one running batch that rows join at several steps: outputs equal plain greedy, and after every step each row's
    cache columns are exactly what it fed and kept."""
    from schemabuild.inference.kv import Batch

    model, tok, contract = tiny
    schema = grammar_schema(tool_picker.output)
    reqs = requests(tok, tool_picker, TEXTS[:6], schema, max_tokens=30)
    reqs[5].temperature, reqs[5].seed = 1.0, 3
    spec, plain = decoders(model, tok, contract)
    want = [plain.generate([r])[0] for r in reqs]
    truth = {id(r): w.token_ids for r, w in zip(reqs, want)}
    plan = {id(reqs[0]): "true", id(reqs[1]): "first", id(reqs[2]): "third", id(reqs[3]): "true",
            id(reqs[4]): "none", id(reqs[5]): "sampled"}
    outcomes = []

    real = spec.lookup.draft

    def scripted(seq, k):  # as many as 6 draft tokens, whatever the batch
        kind, done = plan[id(seq.req)], len(seq.ids)
        if kind == "sampled":
            return real(seq, k)
        nxt = truth[id(seq.req)][done:done + 6][: seq.req.max_tokens - done - 1]
        if kind == "none" or not nxt:
            return []
        wrong = [(t + 1) % len(tok) for t in nxt]  # never the model's choice there
        if kind == "first":
            return wrong[:1] + nxt[1:]
        if kind == "third":
            return nxt[:2] + wrong[2:3] + nxt[3:]
        return nxt

    monkeypatch.setattr(spec.lookup, "draft", scripted)
    joins = {0: [0, 1, 5], 1: [2], 3: [3, 4]}
    batch, rows, step = Batch(), {}, 0
    while step <= max(joins) or batch.rows:
        before = dict(spec.drafts)
        new, _ = spec.step(batch, [reqs[i] for i in joins.get(step, [])])
        rows.update(zip(joins.get(step, []), new))
        outcomes.append((spec.drafts["fed"] - before.get("fed", 0), spec.drafts["kept"] - before.get("kept", 0)))
        check_cache(batch)
        step += 1
    same([spec.result(rows[i]) for i in range(len(reqs))], want)
    assert any(fed and not kept for fed, kept in outcomes)  # a step kept nothing it fed
    assert any(kept for _, kept in outcomes)
    assert rows[0].passes < want[0].forward_passes  # true drafts: fewer passes
    assert rows[1].passes == want[1].forward_passes  # wrong at the first token: no gain, no harm
    assert rows[4].passes == want[4].forward_passes


def test_lone_row_rejections_are_cut_off_the_cache(tiny, tool_picker, monkeypatch):
    """One row alone, its drafts wrong at the first token every step: the cache never keeps a rejected column."""
    from schemabuild.inference.kv import Batch

    model, tok, contract = tiny
    [req] = requests(tok, tool_picker, TEXTS[6:7], grammar_schema(tool_picker.output), max_tokens=30)
    spec, plain = decoders(model, tok, contract)
    [want] = plain.generate([req])
    truth = want.token_ids
    monkeypatch.setattr(spec.lookup, "draft",
                        lambda seq, k: [] if len(seq.ids) >= len(truth) - 1 else
                        [(truth[len(seq.ids)] + 1) % len(tok)] * 5)
    batch = Batch()
    [seq], _ = spec.step(batch, [req])
    while batch.rows:
        check_cache(batch)
        spec.step(batch)
    same([spec.result(seq)], [want])
    assert spec.drafts["fed"] > 0 and spec.drafts["kept"] == 0


# ---- the switch ------------------------------------------------------------------------------------------

def test_serve_and_predict_flags_turn_speculation_off(tiny_model_dir, tool_picker):
    from click.testing import CliRunner

    from schemabuild.cli import main
    from schemabuild.serve.app import ServeConfig, load_models

    for on in (True, False):
        [served] = load_models([tool_picker], ServeConfig(device="cpu", speculate=on), model_dirs=[tiny_model_dir])
        assert (served.model.decoder.lookup is not None) is on
    assert ServeConfig().speculate
    for cmd in ("serve", "predict"):
        assert "--no-speculate" in CliRunner().invoke(main, [cmd, "--help"]).output
