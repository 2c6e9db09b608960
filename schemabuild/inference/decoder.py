"""Constrained decoding: our own KV-cached decode loop over a model's forward pass (`forward.Forward`: a transformers
model, or llama.cpp over a GGUF), with grammar masks, jump-forward, prompt-lookup speculation and continuous batching
(the server's scheduler, `schemabuild.serve.engine.Engine`, drives it).

    decoder = Decoder(model, tokenizer, stop_ids=contract["stop_ids"])          # grammar_backend="llguidance"
    [result] = decoder.generate([Request(prompt_ids, grammar_schema(task.output))])

On a transformers model one batch = one left-padded KV cache (`kv.Batch`, `kv.TorchForward`). Each forward pass
feeds every live sequence its pending tokens (the prompt, then the token just chosen plus any jump-forward tokens),
right-aligned with an attention mask and explicit position ids, so sequences of different lengths share the pass.
Finished sequences leave the cache. A joining sequence's prompt is fed in a prefill pass of its own (all joiners of a
step together), at most `prefill_chunk` tokens a step while other rows decode, then its KV joins the batch's cache
(chunked prefill: a long prompt does not stall the decoding rows). A greedy sequence may also feed a draft copied
from its prompt (`speculate.py`): the pass then checks it, and the draft tokens the model would not have chosen leave
the cache.
A sequence may start from the cached KV of a prompt prefix many requests share (`kv.start_cache`).
"""

from __future__ import annotations

import collections
import threading

from schemabuild.inference.grammars import DEFAULT_BACKEND, make_backend, printable_mask
from schemabuild.inference.jump import JumpForward
from schemabuild.inference.forward import Forward
from schemabuild.inference.kv import PrefixCache, TorchForward
from schemabuild.inference.request import Request, Result, Sequence, check_request
from schemabuild.inference.sampling import choose, new_generator
from schemabuild.inference.speculate import PromptLookup, draft_limit

PREFILL_CHUNK = 128
"""Default `prefill_chunk`: most prompt tokens a joining row feeds per step while others decode. On the 135M model
(BENCHMARKS.md, prefix reuse: 38 tokens 274 ms, 196 tokens 878 ms on one loaded core) a pass costs about
130 ms + 3.8 ms a token: a 128-token chunk adds ~0.6 s to the decoding rows' step (a 16-row decode step is ~0.3 s)
instead of a whole long prompt's seconds, and costs a 512-token prompt ~20 % more prefill time (64: ~45 %). Task
prompts after prefix reuse (~16-50 tokens) are never cut; a client's ~200-token system prompt takes two steps."""


class Decoder:
    """Batched, grammar-constrained decoding with a KV cache over a transformers causal LM or another `Forward`."""

    def __init__(self, model, tokenizer, stop_ids: list[int], device=None, jump_forward: bool = True,
                 prefix_cache: int = 8, mixed_adapters: bool = False, grammar_backend: str = DEFAULT_BACKEND,
                 speculate: bool = True, prefill_chunk: int = PREFILL_CHUNK):
        """`model`: a transformers causal LM (run by `kv.TorchForward`) or a `forward.Forward` engine.
        `prefix_cache`: how many shared prompt prefixes (see Request.prefix_len) keep their KV; 0 = no reuse.
        `mixed_adapters`: on a PEFT model with several LoRA adapters, sequences of every adapter share one batch and
        each forward pass, each LoRA layer adding its row's own adapter (PEFT's `adapter_names`); off, one batch per
        adapter (`set_adapter` before each). Off by default: on 2 CPU cores it measured no faster (BENCHMARKS.md).
        `grammar_backend`: "xgrammar" or "llguidance" (`grammars.BACKENDS`).
        `speculate`: greedy sequences feed drafts copied from their prompt (`speculate.py`): same outputs, fewer
        passes.
        `prefill_chunk`: while other rows of the batch decode, a joining sequence feeds at most this many prompt
        tokens per step (chunked prefill, see `step`); 0 = its whole prompt in one pass."""
        if prefill_chunk < 0:
            raise ValueError("prefill_chunk must not be negative")
        import torch

        if not stop_ids:
            raise ValueError("stop_ids must name at least one token")
        self.model, self.tokenizer = model, tokenizer
        self.stop_ids = [int(i) for i in stop_ids]
        if isinstance(model, Forward):
            self.device, self.vocab_size = torch.device(model.device), model.vocab_size
        else:
            self.device = torch.device(device) if device is not None else next(model.parameters()).device
            self.vocab_size = int(model.config.vocab_size if hasattr(model, "config") else len(tokenizer))
        self.jump_forward = jump_forward
        self.drafts = collections.Counter()  # "fed" draft tokens and "kept" ones, over the decoder's life
        self.prefill_chunk = prefill_chunk
        self.prefills = collections.Counter()  # prefill "passes", and "cut" rows that left prompt for a later step
        self.grammars = make_backend(grammar_backend, tokenizer, self.vocab_size, self.stop_ids)
        self.jumps = JumpForward(tokenizer, self.grammars, self.stop_ids)
        self.lookup = PromptLookup(self.grammars, self.stop_ids) if speculate else None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.default_adapter = getattr(model, "active_adapter", None) if hasattr(model, "peft_config") else None
        self.mixed = mixed_adapters and len(getattr(model, "peft_config", None) or {}) > 1
        self.forward: Forward = model if isinstance(model, Forward) else TorchForward(
            model, self.device, self.vocab_size, self.pad_id, self.mixed)
        self.prefixes = PrefixCache(prefix_cache)
        self._lock = threading.Lock()  # one step at a time per model (the Engine's thread and others)
        self._bits = self._printable = None

    # -- public --

    @property
    def context(self) -> int | None:
        """Positions a sequence may hold (prompt + output); None when the engine does not say."""
        return self.forward.context

    def new_batch(self, adapter: str | None = None):
        """An empty running batch on `adapter` (the engine's kind: `kv.Batch` on a transformers model)."""
        return self.forward.new_batch(adapter)

    def group_key(self, req: Request) -> str | None:
        """Requests with the same key share a running batch: their adapter, or one batch in all when `mixed`."""
        return None if self.mixed else req.adapter

    def generate(self, requests: list[Request]) -> list[Result]:
        """Decode `requests` together (one batch per group key), results in request order."""
        for r in requests:
            self.check(r)
        results: list[Result | None] = [None] * len(requests)
        groups: dict[str | None, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(self.group_key(r), []).append(i)
        for key, idx in groups.items():
            batch = self.new_batch(key)
            seqs, _ = self.step(batch, [requests[i] for i in idx])
            while self.live(batch):
                self.step(batch)
            for i, seq in zip(idx, seqs):
                results[i] = self.result(seq)
        return results  # type: ignore[return-value]

    def step(self, batch, joining: list[Request] = ()) -> tuple[list[Sequence], list[Sequence]]:
        """One step of a running batch: a decode pass for the sequences already decoding in it, then one prefill pass
        for the sequences still prefilling (`batch.filling`, `joining` added to them). A prefilling row feeds at most
        `prefill_chunk` prompt tokens per step while other rows decode (all of them when none does); once its prompt
        is in, it takes its first token and its KV joins the batch's cache. Finished sequences leave the batch at once.

        Returns (the sequences made for `joining`, in order; the sequences that finished in this step). Each keeps
        its own grammar matcher, jump-forward and stop, so a sequence decodes exactly as it would alone.
        """
        import torch

        new = [self.sequence(r) for r in joining]
        live: list[Sequence] = []
        with self._lock, torch.inference_mode():
            if not self.mixed:
                self._use_adapter(batch.adapter)
            if batch.rows:
                self._pass(batch)
            if new:
                bitmask = self._bitmask(len(new))
                if self.jump_forward:  # text forced before the first token (e.g. `{"tool":"`) joins the prefill
                    for b, seq in enumerate(new):
                        if seq.matcher is not None:
                            self._jump(seq, bitmask, b)
                live = [seq for seq in new if seq.finish is None]
                if live:
                    names = [self._adapter_name(s.req.adapter if self.mixed else batch.adapter) for s in live]
                    part = self.forward.start(live, self.prefixes, batch.adapter, names)
                    if batch.filling is None:
                        batch.filling = part
                    else:
                        self.forward.merge(batch.filling, part)
            if batch.filling is not None:
                decoding = any(seq.finish is None for seq in batch.rows)
                self._fill(batch, self.prefill_chunk if decoding else 0)
            early = {id(seq) for seq in live}
            finished = [seq for seq in batch.rows if seq.finish is not None]
            finished += [seq for seq in new if seq.finish is not None and id(seq) not in early]
            batch.keep([seq for seq in batch.rows if seq.finish is None])
            if self.lookup is not None:  # drafts for the next decode pass, shorter as the batch grows
                k = draft_limit(len(batch.rows))
                for seq in batch.rows:
                    seq.draft = self.lookup.draft(seq, k) if k else []
                    seq.pending += seq.draft
        return new, finished

    def live(self, batch) -> list[Sequence]:
        """The sequences `batch` holds: those decoding, then those still prefilling."""
        return batch.rows + (batch.filling.rows if batch.filling is not None else [])

    def drop(self, batch, seqs: list[Sequence]) -> None:
        """Take `seqs` out of `batch` now (their callers left); their KV memory is freed."""
        with self._lock:
            gone = {id(s) for s in seqs}
            batch.keep([seq for seq in batch.rows if id(seq) not in gone])
            if batch.filling is not None:
                batch.filling.keep([seq for seq in batch.filling.rows if id(seq) not in gone])
                if not batch.filling.rows:
                    batch.filling = None

    def compile(self, schema: dict | None):
        """Compile (or fetch from the backend's cache) the grammar for `schema`; GrammarError when it cannot."""
        return self.grammars.compile(schema)

    def check(self, r: Request) -> None:
        """Raise ValueError (GrammarError for the schema) when `r` cannot be decoded; compiles unless r.grammar is set."""
        check_request(r, self.vocab_size, set(getattr(self.model, "peft_config", {}) or {}))
        if r.constrained and r.grammar is None:
            self.compile(r.schema)

    def sequence(self, r: Request) -> Sequence:
        """A new sequence for `r` (its matcher, its generator), not yet in any batch."""
        grammar = r.grammar if r.grammar is not None else (self.compile(r.schema) if r.constrained else None)
        matcher = self.grammars.matcher(grammar) if r.constrained else None
        return Sequence(req=r, matcher=matcher, generator=new_generator(r, self.device), pending=list(r.prompt_ids))

    def result(self, seq: Sequence) -> Result:
        """The Result of a finished sequence."""
        content = [t for t in seq.ids if t not in self.stop_ids]
        return Result(token_ids=seq.ids, text=self.tokenizer.decode(content, skip_special_tokens=False),
                      finish_reason=seq.finish or "length", token_logprobs=seq.logprobs, forward_passes=seq.passes,
                      prompt_tokens=len(seq.req.prompt_ids), completion_tokens=len(seq.ids))

    # -- run --

    def _adapter_name(self, adapter: str | None) -> str | None:
        return adapter if adapter is not None else self.default_adapter

    def _use_adapter(self, adapter: str | None) -> None:
        name = self._adapter_name(adapter)
        if name is not None and getattr(self.model, "active_adapter", None) != name:
            self.model.set_adapter(name)

    def _bitmask(self, n: int):
        if self._bits is None or self._bits.shape[0] < n:
            self._bits = self.grammars.allocate_mask(max(n, 8))
        return self._bits

    def _pass(self, batch) -> None:
        """One forward pass over `batch`'s rows, then each sequence chooses and takes its next token (under its
        grammar's mask), and the draft tokens it fed that the model confirms; the rest leave the batch's KV."""
        import torch

        live = batch.rows
        drafts = [seq.draft for seq in live]
        keep = 1 + max(len(d) for d in drafts)  # logits for each row's last real token and its draft tokens
        names = [self._adapter_name(s.req.adapter) for s in live] if self.mixed else None
        logits = self.forward.run(batch, [1 + len(d) for d in drafts], names)
        first = logits[torch.arange(len(live)), torch.tensor([keep - 1 - len(d) for d in drafts])]
        bitmask = self._bitmask(len(live))
        for b, (seq, tok, lp) in enumerate(zip(live, *self._choose(first, live, bitmask))):
            self._advance(seq, tok, lp, bitmask, b)
        rejected = []
        for b, (seq, draft) in enumerate(zip(live, drafts)):
            kept = self._verify(seq, draft, logits[b, keep - len(draft):]) if draft else 0
            seq.draft, seq.n_seen = [], seq.n_seen - (len(draft) - kept)
            rejected.append(None if seq.finish is not None else len(draft) - kept)
            if draft:
                self.drafts.update(fed=len(draft), kept=kept)
        self.forward.drop_rejected(batch, rejected)

    def _fill(self, batch, chunk: int) -> None:
        """One prefill pass over the rows of `batch.filling`: each feeds its next `chunk` pending tokens (0: all of
        them); the rows whose prompt is then all in choose their first token, and leave for the decoding rows."""
        part = batch.filling
        rest = [seq.pending[chunk:] if chunk else [] for seq in part.rows]
        for seq, later in zip(part.rows, rest):
            seq.pending = seq.pending[: len(seq.pending) - len(later)]
        names = [self._adapter_name(s.req.adapter) for s in part.rows] if self.mixed else None
        logits = self.forward.run(part, [1] * len(part.rows), names)
        self.prefills.update(passes=1, cut=sum(1 for later in rest if later))
        ready = [b for b, later in enumerate(rest) if not later]
        for seq, later in zip(part.rows, rest):
            seq.pending = later
        if not ready:
            return
        seqs = [part.rows[b] for b in ready]
        bitmask = self._bitmask(len(seqs))
        for b, (seq, tok, lp) in enumerate(zip(seqs, *self._choose(logits[ready, -1], seqs, bitmask))):
            self._advance(seq, tok, lp, bitmask, b)
        if len(seqs) == len(part.rows):
            batch.filling = None
        else:
            part = self.forward.split(part, seqs)
        self.forward.merge(batch, part)

    def _choose(self, logits, seqs: list[Sequence], bitmask) -> tuple[list[int], list[float]]:
        """Each row's token (row i of `logits` is seqs[i]'s, masked by its grammar in row i of `bitmask`) and its
        log-probability under the masked distribution."""
        import torch

        constrained = [b for b, seq in enumerate(seqs) if seq.matcher is not None]
        if constrained:
            for b in constrained:
                seqs[b].matcher.fill_mask(bitmask, b)
            with_schema = [b for b in constrained if seqs[b].req.schema is not None]
            if with_schema:
                if self._printable is None:
                    self._printable = printable_mask(self.grammars.token_bytes(), self.vocab_size, self.stop_ids)
                bitmask[with_schema] &= self._printable
            self.grammars.apply_mask(logits, bitmask, constrained)
        chosen = choose(logits, seqs)
        chosen_lp = (logits.gather(1, chosen[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)).tolist()
        return chosen.tolist(), chosen_lp

    def _verify(self, seq: Sequence, draft: list[int], after) -> int:
        """Take `draft`'s tokens while each is the token `seq` just chose (its KV is then already in place), choosing
        the next from `after[i]`, the logits the pass computed after draft[i]; stop where they differ or the grammar
        forces text. Returns how many draft tokens it kept (the rest leave the cache)."""
        kept = 0
        while seq.finish is None and kept < len(draft) and seq.pending[0] == draft[kept]:
            seq.pending = seq.pending[1:]
            kept += 1
            if seq.pending:  # forced text after it: fed by the next pass, after which the draft is moot
                break
            bitmask = self._bitmask(1)  # every row took its first token: the mask rows are free
            [tok], [lp] = self._choose(after[kept - 1][None], [seq], bitmask)
            self._advance(seq, tok, lp, bitmask, 0)
        return kept

    def _advance(self, seq: Sequence, tok: int, logprob: float, bitmask, b: int) -> None:
        """Take the chosen token, then (jump-forward) any tokens the grammar forces after it."""
        seq.ids.append(tok)
        seq.logprobs.append(float(logprob))
        if tok in self.stop_ids:
            if seq.matcher is not None:
                seq.matcher.accept(tok)
            seq.finish = "stop"
        elif seq.matcher is not None and not seq.matcher.accept(tok):
            # Only possible when the mask had no allowed token left (a grammar this vocabulary cannot finish).
            seq.ids.pop()
            seq.logprobs.pop()
            seq.finish = "length"
        elif len(seq.ids) >= seq.req.max_tokens:
            seq.finish = "length"
        else:
            seq.pending = [tok]
            if self.jump_forward and seq.matcher is not None:
                self._jump(seq, bitmask, b)

    def _jump(self, seq: Sequence, bitmask, b: int) -> None:
        """Append the tokens the grammar forces next to the output and to the next forward pass's input;
        finish the sequence when the grammar then admits only a stop token."""
        forced = self.jumps.forced_tokens(seq, bitmask, b)
        room = seq.req.max_tokens - len(seq.ids)
        if len(forced) > room:  # the budget ends inside the forced text
            seq.ids.extend(forced[:room])
            seq.logprobs.extend([0.0] * room)
            seq.finish = "length"
            return
        seq.ids.extend(forced)
        seq.logprobs.extend([0.0] * len(forced))
        seq.pending.extend(forced)
        if seq.matcher.only_stop_left(bitmask, b):
            if len(seq.ids) < seq.req.max_tokens:
                seq.ids.append(self.stop_ids[0])
                seq.logprobs.append(0.0)
                seq.finish = "stop"
            else:
                seq.finish = "length"
        elif len(seq.ids) >= seq.req.max_tokens:
            seq.finish = "length"
