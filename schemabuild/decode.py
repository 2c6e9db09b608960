"""Constrained decoding: our own KV-cached decode loop over a transformers model, with xgrammar masks,
jump-forward and batching (the server's request batcher, `schemabuild.serve.engine.Engine`, drives it).

    decoder = Decoder(model, tokenizer, stop_ids=contract["stop_ids"])
    [result] = decoder.generate([Request(prompt_ids, grammar_schema(task.output))])

One batch = one left-padded KV cache. Each forward pass feeds every live row its pending tokens (the
prompt, then the token just chosen plus any jump-forward tokens), right-aligned with an attention mask
and explicit position ids, so rows of different lengths share the pass. Finished rows leave the cache.

Prefix reuse: a request may name its first `prefix_len` prompt tokens as a prefix many requests share (the system
prompt and chat template up to the user's text: `contract.prompt_prefix`). That prefix's KV is computed once per
(adapter, token ids), kept in a small LRU, and a new row's prefill starts from a copy of it and feeds only the rest.
Keys carry their absolute positions (rotary) and the rest is fed at positions prefix_len onward, so the row
computes what a full prefill computes.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any

from schemabuild.errors import GrammarError  # noqa: F401 - re-exported: `from schemabuild.decode import GrammarError`
from schemabuild.batch import Batch, PrefixCache, start_from_prefixes
from schemabuild.grammar import compile_grammar, printable_mask, token_splits

# Jump-forward takes at most this much forced text per step; the rest is forced again on the next step.
MAX_JUMP_BYTES = 256
MAX_JUMP_TOKENS = 64
# Below this, logits / temperature overflow float32 (1e-320 → inf → NaN probabilities).
MIN_TEMPERATURE = 1e-3


@dataclasses.dataclass
class Request:
    """One generation request."""

    prompt_ids: list[int]
    """Prompt token ids (from `contract.encode_prompt`)."""
    schema: dict | None
    """JSON schema to follow (task schemas already through `contract.grammar_schema`); None = any JSON (json_object mode)."""
    max_tokens: int = 256
    """Most completion tokens, the stop token included."""
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass (with temperature > 0)."""
    seed: int | None = None
    """Seed of this request's own torch.Generator (sampling only)."""
    adapter: str | None = None
    """PEFT adapter name on a shared base; None = the model as loaded."""
    constrained: bool = True
    """False = no grammar at all (benchmarks and debugging only; `schema` is ignored)."""
    grammar: Any = None
    """An xgrammar CompiledGrammar already compiled for `schema` (the server compiles off the decode thread)."""
    prefix_len: int = 0
    """Leading prompt tokens shared by many requests (`contract.shared_prefix_len`), whose KV the decoder keeps and
    reuses; 0 = none. The ids themselves are the cache key, so a wrong length only costs a cache entry."""


@dataclasses.dataclass
class Result:
    """What one request produced."""

    token_ids: list[int]
    """Completion ids, the stop token included when finish_reason is "stop"."""
    text: str
    """The completion text without the stop token."""
    finish_reason: str
    """"stop" (stop token chosen or the grammar allows nothing else) or "length"."""
    token_logprobs: list[float]
    """Per token of `token_ids`: log-probability under the grammar-masked distribution (0.0 for forced tokens)."""
    forward_passes: int
    """Model forward passes this request took part in (prefill included)."""
    prompt_tokens: int
    completion_tokens: int


# ---- grammars --------------------------------------------------------------------------------------

def _clip_utf8(text: str, limit: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `limit` bytes."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


# ---- the decode loop -------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class _Row:
    """Decode state of one request inside a batch."""

    index: int
    req: Request
    matcher: Any
    generator: Any
    pending: list[int]
    n_seen: int = 0
    ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    passes: int = 0
    finish: str | None = None
    tag: Any = None
    """The caller's handle for this row (the server's job)."""


class Decoder:
    """Batched, grammar-constrained decoding with a KV cache over a transformers causal LM."""

    def __init__(self, model, tokenizer, stop_ids: list[int], device=None, jump_forward: bool = True,
                 prefix_cache: int = 8, mixed_adapters: bool = False):
        """`prefix_cache`: how many shared prompt prefixes (see Request.prefix_len) keep their KV; 0 = no reuse.
        `mixed_adapters`: on a PEFT model with several LoRA adapters, rows of every adapter share one batch and each
        forward pass, each LoRA layer adding its row's own adapter (PEFT's `adapter_names`); off, one batch per
        adapter (`set_adapter` before each). Off by default: on 2 CPU cores it measured no faster (BENCHMARKS.md)."""
        import torch
        import xgrammar as xgr

        if not stop_ids:
            raise ValueError("stop_ids must name at least one token")
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = [int(i) for i in stop_ids]
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.jump_forward = jump_forward
        self.vocab_size = int(model.config.vocab_size if hasattr(model, "config") else len(tokenizer))
        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_ids
        )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.default_adapter = getattr(model, "active_adapter", None) if hasattr(model, "peft_config") else None
        self.mixed = mixed_adapters and len(getattr(model, "peft_config", None) or {}) > 1
        self._splits: dict[bytes, set[int]] | None = None
        self._first_byte = None
        self._lock = threading.Lock()  # one generate at a time per model (the Engine's thread and others)
        self.prefixes = PrefixCache(prefix_cache)

    # -- public --

    def generate(self, requests: list[Request]) -> list[Result]:
        """Decode `requests` together (one batch per adapter, or one in all when `mixed`), results in request order."""
        for r in requests:
            self.check(r)
        results: list[Result | None] = [None] * len(requests)
        groups: dict[str | None, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(None if self.mixed else r.adapter, []).append(i)
        for adapter, idx in groups.items():
            batch = Batch(adapter)
            rows, _ = self.step(batch, [requests[i] for i in idx])
            while batch.rows:
                self.step(batch)
            for i, row in zip(idx, rows):
                results[i] = self.result(row)
        return results  # type: ignore[return-value]

    def step(self, batch: "Batch", joining: list[Request] = ()) -> tuple[list[_Row], list[_Row]]:
        """One step of a running batch: a decode pass for the rows already in it, then the prefill of `joining`
        in a pass of its own, merged into the batch's cache. Finished rows leave the batch at once.

        Returns (the rows made for `joining`, in order; the rows that finished in this step). Each row keeps its
        own grammar matcher, jump-forward and stop, so a row decodes exactly as it would alone.
        """
        import torch

        new_rows = [self._new_row(i, r) for i, r in enumerate(joining)]
        with self._lock, torch.inference_mode():
            if not self.mixed:
                self._use_adapter(batch.adapter)
            if batch.rows:
                batch.cache, batch.mask = self._pass(batch.rows, batch.cache, batch.mask)
            if new_rows:
                bitmask = self._bitmask(len(new_rows))
                if self.jump_forward:  # text forced before the first token (e.g. `{"tool":"`) joins the prefill
                    for b, row in enumerate(new_rows):
                        if row.matcher is not None:
                            self._jump(row, bitmask, b)
                live = [row for row in new_rows if row.finish is None]
                if live:
                    cache, mask = self._start(live, batch.adapter)
                    cache, mask = self._pass(live, cache, mask)
                    batch.merge(live, cache, mask)
            finished = [row for row in batch.rows if row.finish is not None]
            early = {id(row) for row in live} if new_rows else set()
            finished += [row for row in new_rows if row.finish is not None and id(row) not in early]
            batch.keep([row for row in batch.rows if row.finish is None])
        return new_rows, finished

    def drop(self, batch: "Batch", rows: list[_Row]) -> None:
        """Take `rows` out of `batch` now (their callers left); their KV memory is freed."""
        with self._lock:
            gone = {id(r) for r in rows}
            batch.keep([row for row in batch.rows if id(row) not in gone])

    def compile(self, schema: dict | None):
        """Compile (or fetch from the cache) the grammar for `schema`; GrammarError when it cannot."""
        return compile_grammar(self.tokenizer_info, schema)

    def check(self, r: Request) -> None:
        """Raise ValueError (GrammarError for the schema) when `r` cannot be decoded; compiles unless r.grammar is set."""
        if not r.prompt_ids:
            raise ValueError("prompt_ids is empty")
        if min(r.prompt_ids) < 0 or max(r.prompt_ids) >= self.vocab_size:
            raise ValueError(f"prompt_ids: token ids must be in [0, {self.vocab_size})")
        if r.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not 0 <= r.prefix_len <= len(r.prompt_ids):
            raise ValueError("prefix_len must be in [0, len(prompt_ids)]")
        if not (math.isfinite(r.temperature) and r.temperature >= 0):
            raise ValueError("temperature must be a finite number >= 0")
        if 0 < r.temperature < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        if not 0 < r.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if r.adapter is not None:
            names = set(getattr(self.model, "peft_config", {}) or {})
            if r.adapter not in names:
                raise ValueError(f"unknown adapter {r.adapter!r} (loaded: {', '.join(sorted(names)) or 'none'})")
        if r.constrained and r.grammar is None:
            self.compile(r.schema)

    # -- setup --

    def _adapter_name(self, adapter: str | None) -> str | None:
        return adapter if adapter is not None else self.default_adapter

    def _use_adapter(self, adapter: str | None) -> None:
        name = self._adapter_name(adapter)
        if name is not None and getattr(self.model, "active_adapter", None) != name:
            self.model.set_adapter(name)

    def _new_row(self, i: int, r: Request) -> _Row:
        import torch
        import xgrammar as xgr

        grammar = r.grammar if r.grammar is not None else (self.compile(r.schema) if r.constrained else None)
        matcher = xgr.GrammarMatcher(grammar) if r.constrained else None
        gen = None
        if r.temperature > 0:
            gen = torch.Generator(device=self.device)
            if r.seed is not None:
                gen.manual_seed(int(r.seed))
            else:
                gen.seed()
        return _Row(index=i, req=r, matcher=matcher, generator=gen, pending=list(r.prompt_ids))

    # -- run --

    def _bitmask(self, n: int):
        import xgrammar as xgr

        if getattr(self, "_bits", None) is None or self._bits.shape[0] < n:
            self._bits = xgr.allocate_token_bitmask(max(n, 8), self.vocab_size)
        return self._bits

    def _start(self, live: list[_Row], adapter: str | None):
        """The (cache, mask) new rows' prefill starts from: each row's shared prefix KV, computed on its first use and
        then copied from the LRU, its tokens taken off the row's pending ones; empty for rows without one."""
        import torch
        from transformers import DynamicCache

        entries = []
        for row in live:
            n = min(row.req.prefix_len, len(row.req.prompt_ids) - 1) if self.prefixes.size > 0 else 0
            if n < 1:
                entries.append(None)
                continue
            entries.append(self._prefix(row.req.adapter if self.mixed else adapter, tuple(row.req.prompt_ids[:n])))
            row.pending = row.pending[n:]
            row.n_seen = n
        if all(e is None for e in entries):
            return DynamicCache(), torch.zeros((len(live), 0), dtype=torch.long, device=self.device)
        return start_from_prefixes(entries, self.device)

    def _prefix(self, adapter: str | None, ids: tuple[int, ...]) -> list:
        """The KV of prompt prefix `ids` on `adapter` (the one active unless mixed): from the LRU, else one pass now."""
        import torch
        from transformers import DynamicCache

        name = self._adapter_name(adapter)
        entry = self.prefixes.get(name, ids)
        if entry is None:
            out = self.model(input_ids=torch.tensor([ids], device=self.device), past_key_values=DynamicCache(),
                             position_ids=torch.arange(len(ids), device=self.device)[None], use_cache=True,
                             logits_to_keep=1, **({"adapter_names": [name]} if self.mixed else {}))
            entry = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
            self.prefixes.put(name, ids, entry)
        return entry

    def _pass(self, live: list[_Row], cache, mask):
        """One forward pass over `live` (their pending tokens, right-aligned, left padding inside the step),
        then each row chooses and takes its next token. Returns the grown (cache, attention mask)."""
        import torch
        import xgrammar as xgr

        width = max(len(row.pending) for row in live)
        ids_l, mask_l, pos_l = [], [], []
        for row in live:
            n, pad = len(row.pending), width - len(row.pending)
            ids_l.append([self.pad_id] * pad + row.pending)
            mask_l.append([0] * pad + [1] * n)
            pos_l.append([0] * pad + list(range(row.n_seen, row.n_seen + n)))
            row.n_seen += n
            row.pending = []
            row.passes += 1
        ids = torch.tensor(ids_l, device=self.device)
        pos = torch.tensor(pos_l, device=self.device)
        mask = torch.cat([mask, torch.tensor(mask_l, device=self.device)], dim=1)
        padded = not bool(mask.all())
        per_row = {"adapter_names": [self._adapter_name(row.req.adapter) for row in live]} if self.mixed else {}
        out = self.model(  # without padding the model's own causal mask is enough (and cheaper to build)
            input_ids=ids, attention_mask=mask if padded else None, position_ids=pos,
            past_key_values=cache, use_cache=True, logits_to_keep=1, **per_row,
        )
        logits = out.logits[:, -1, :].float()
        if logits.shape[-1] > self.vocab_size:
            logits = logits[:, : self.vocab_size]

        bitmask = self._bitmask(len(live))
        constrained = [b for b, row in enumerate(live) if row.matcher is not None]
        if constrained:
            for b in constrained:
                live[b].matcher.fill_next_token_bitmask(bitmask, b)
            with_schema = [b for b in constrained if live[b].req.schema is not None]
            if with_schema:
                bitmask[with_schema] &= self._printable_mask()
            xgr.apply_token_bitmask_inplace(
                logits, bitmask[: len(live)].to(self.device, non_blocking=True), indices=constrained
            )
        chosen = self._choose(logits, live)
        chosen_lp = (logits.gather(1, chosen[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)).tolist()
        for b, (row, tok, lp) in enumerate(zip(live, chosen.tolist(), chosen_lp)):
            self._advance(row, tok, lp, bitmask, b)
        return out.past_key_values, mask

    def _choose(self, logits, live: list[_Row]):
        """Greedy argmax per row, or temperature/top-p sampling with the row's own generator."""
        import torch

        chosen = torch.argmax(logits, dim=-1)
        for b, row in enumerate(live):
            r = row.req
            if r.temperature <= 0:
                continue
            probs = torch.softmax(logits[b] / r.temperature, dim=-1)
            if r.top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                cum = torch.cumsum(sorted_p, dim=-1)
                drop = (cum - sorted_p) >= r.top_p  # keep the smallest prefix reaching top_p (the first always)
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
            chosen[b] = torch.multinomial(probs, 1, generator=row.generator)[0]
        return chosen

    def _advance(self, row: _Row, tok: int, logprob: float, bitmask, b: int) -> None:
        """Take the chosen token, then (jump-forward) any tokens the grammar forces after it."""
        row.ids.append(tok)
        row.logprobs.append(float(logprob))
        if tok in self.stop_ids:
            if row.matcher is not None:
                row.matcher.accept_token(tok)
            row.finish = "stop"
            return
        if row.matcher is not None and not row.matcher.accept_token(tok):
            # Only possible when the mask had no allowed token left (a grammar this vocabulary cannot finish).
            row.ids.pop()
            row.logprobs.pop()
            row.finish = "length"
            return
        if len(row.ids) >= row.req.max_tokens:
            row.finish = "length"
            return
        row.pending = [tok]
        if self.jump_forward and row.matcher is not None:
            self._jump(row, bitmask, b)

    def _jump(self, row: _Row, bitmask, b: int) -> None:
        """Append the tokens the grammar forces next to the output and to the next forward pass's input;
        finish the row when the grammar then admits only a stop token."""
        r = row.req
        forced = self._forced_tokens(row, bitmask, b)
        room = r.max_tokens - len(row.ids)
        if len(forced) > room:  # the budget ends inside the forced text
            row.ids.extend(forced[:room])
            row.logprobs.extend([0.0] * room)
            row.finish = "length"
            return
        row.ids.extend(forced)
        row.logprobs.extend([0.0] * len(forced))
        row.pending.extend(forced)
        if self._only_stop_allowed(row.matcher, bitmask, b):
            if len(row.ids) < r.max_tokens:
                row.ids.append(self.stop_ids[0])
                row.logprobs.append(0.0)
                row.finish = "stop"
            else:
                row.finish = "length"
        elif len(row.ids) >= r.max_tokens:
            row.finish = "length"

    def _printable_mask(self):
        if getattr(self, "_printable", None) is None:
            self._printable = printable_mask(self.tokenizer_info, self.vocab_size, self.stop_ids)
        return self._printable

    # -- jump-forward --

    def _forced_tokens(self, row: _Row, bitmask, b: int) -> list[int]:
        """Tokens for the text the grammar forces next, tokenized as training tokenized whole targets.

        The forced text is appended to the text so far and the whole is retokenized; the jump happens only
        when that keeps the tokens generated so far, and the last forced token is kept only when no
        vocabulary token could span its end given what the grammar allows next (else the model picks it).
        """
        forced_text = row.matcher.find_jump_forward_string()
        if not forced_text:
            return []
        forced_text = _clip_utf8(forced_text, MAX_JUMP_BYTES)
        so_far = self.tokenizer.decode(row.ids, skip_special_tokens=False)
        if "\ufffd" in so_far:  # a character split across tokens: no safe text boundary
            return []
        full = self.tokenizer(so_far + forced_text, add_special_tokens=False)["input_ids"]
        if full[: len(row.ids)] != row.ids or len(full) == len(row.ids):
            return []
        forced = full[len(row.ids):][:MAX_JUMP_TOKENS]
        clipped = len(forced) < len(full) - len(row.ids)
        accepted = 0
        for t in forced:
            if not row.matcher.accept_token(t):
                break
            accepted += 1
        if accepted < len(forced):
            if accepted:
                row.matcher.rollback(accepted)
            return []
        text = self.tokenizer.decode(row.ids + forced, skip_special_tokens=False) if clipped else so_far + forced_text
        if not self._boundary_safe(text, row.matcher, bitmask, b):
            row.matcher.rollback(1)
            forced = forced[:-1]
        return forced

    def _boundary_safe(self, text: str, matcher, bitmask, b: int) -> bool:
        """True when no vocabulary token can span the end of `text` into what the grammar allows next."""
        import numpy as np

        if self._splits is None:
            self._first_byte, self._splits, self._max_token_len = token_splits(
                self.tokenizer_info, self.vocab_size, self.stop_ids)
        matcher.fill_next_token_bitmask(bitmask, b)
        bits = np.unpackbits(bitmask[b].numpy().view(np.uint8), bitorder="little")[: self.vocab_size]
        allowed = np.nonzero(bits)[0]
        firsts = self._first_byte[allowed]
        next_bytes = set(np.unique(firsts[firsts >= 0]).tolist())
        if not next_bytes:
            return True
        tail = text.encode("utf-8")[-self._max_token_len:]
        for k in range(1, len(tail) + 1):
            follow = self._splits.get(tail[-k:])
            if follow and follow & next_bytes:
                return False
        return True

    def _only_stop_allowed(self, matcher, bitmask, b: int) -> bool:
        """The grammar is complete and admits nothing but a stop token (the output is decided)."""
        import numpy as np

        if matcher.is_terminated():
            return True
        if not matcher.is_completed():
            return False
        matcher.fill_next_token_bitmask(bitmask, b)
        bits = np.unpackbits(bitmask[b].numpy().view(np.uint8), bitorder="little")[: self.vocab_size]
        allowed = set(np.nonzero(bits)[0].tolist())
        return allowed <= set(self.stop_ids)

    def result(self, row: _Row) -> Result:
        """The Result of a finished row."""
        content = [t for t in row.ids if t not in self.stop_ids]
        return Result(
            token_ids=row.ids,
            text=self.tokenizer.decode(content, skip_special_tokens=False),
            finish_reason=row.finish or "length",
            token_logprobs=row.logprobs,
            forward_passes=row.passes,
            prompt_tokens=len(row.req.prompt_ids),
            completion_tokens=len(row.ids),
        )
