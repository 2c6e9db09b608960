"""The llguidance grammar backend: JSON schemas compiled by llguidance with the contract's settings.

A compiled grammar is a matcher in its start state; each sequence gets a deep copy. llguidance bounds its own
work per compile and per mask (its parser limits), so it compiles in the server's process, on a worker thread.
It refuses, naming them, the keywords it does not implement (`lenient` is off while the contract is strict).
"""

from __future__ import annotations

import json
from typing import Any

from schemabuild.errors import GrammarError
from schemabuild.inference.grammars import GrammarCache, allowed_ids, apply_bitmask, compile_settings


def options() -> dict:
    """llguidance's JSON compile options from the contract's settings."""
    s = compile_settings()
    return {"item_separator": s["separators"][0], "key_separator": s["separators"][1],
            "whitespace_flexible": s["any_whitespace"], "coerce_one_of": False, "lenient": not s["strict"]}


def grammar_text(schema: dict | None) -> str:
    """The llguidance grammar for `schema` (None = any JSON object, compact, as json_object mode promises)."""
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(json.dumps({"type": "object"} if schema is None else schema),
                                                         overrides=options())


class Matcher:
    """An llguidance LLMatcher behind the backend protocol."""

    def __init__(self, matcher, stop_ids: list[int], vocab_size: int):
        self.m, self.stop_ids, self.vocab_size = matcher, stop_ids, vocab_size

    def fill_mask(self, bitmask, row: int) -> None:
        import llguidance.torch

        llguidance.torch.fill_next_token_bitmask(self.m, bitmask, row)

    def accept(self, token: int) -> bool:
        return self.m.try_consume_tokens([token]) == 1  # consume_token would leave a refused token's error state

    def rollback(self, n: int) -> None:
        self.m.rollback(n)

    def forced_text(self) -> str:
        return self.m.compute_ff_bytes().decode("utf-8", "ignore")

    def only_stop_left(self, bitmask, row: int) -> bool:
        if self.m.is_stopped():
            return True
        if not self.m.is_accepting():
            return False
        self.fill_mask(bitmask, row)
        return set(allowed_ids(bitmask, row, self.vocab_size).tolist()) <= set(self.stop_ids)


class Backend:
    """llguidance for one tokenizer: compiles (cached), matchers, masks."""

    name = "llguidance"

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        import llguidance.hf

        self.vocab_size, self.stop_ids = vocab_size, list(stop_ids)
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=self.stop_ids)
        self.cache = GrammarCache()
        # The first mask ever computed for a tokenizer builds llguidance's token tables (seconds on a 49k vocabulary,
        # measured 16 s on a loaded 2-core machine): pay it here, at load, not in a client's first request.
        self.matcher(self.compile(None)).fill_mask(self.allocate_mask(1), 0)

    def compile(self, schema: dict | None) -> Any:
        return self.cache.get_or_compile(schema, lambda: self.load(grammar_text(schema)))

    def load(self, payload: str):
        import llguidance

        start = llguidance.LLMatcher(self.tokenizer, payload, log_level=0)
        if start.is_error():
            raise GrammarError(f"unsupported or invalid JSON schema: {one_line(start.get_error())}")
        return start

    def matcher(self, grammar) -> Matcher:
        return Matcher(grammar.deep_copy(), self.stop_ids, self.vocab_size)

    def allocate_mask(self, rows: int):
        import torch

        return torch.full((rows, (self.vocab_size + 31) // 32), -1, dtype=torch.int32)

    def apply_mask(self, logits, bitmask, rows: list[int]) -> None:
        apply_bitmask(logits, bitmask, rows)

    def token_bytes(self) -> list[bytes]:
        return [self.tokenizer.decode_bytes([i]) for i in range(self.vocab_size)]

    def child_spec(self) -> tuple[str, str] | None:
        return None  # compiles in process: llguidance's own limits bound each compile


def one_line(error: str) -> str:
    """llguidance's error as one line (its regex errors span several, with a caret drawing)."""
    lines = [ln.strip() for ln in error.strip().splitlines() if ln.strip()]
    tail = [ln for ln in lines if ln.startswith("error:")]
    text = lines[0] if lines else "refused"
    if tail and tail[0] not in text:
        text = f"{text.rstrip(':')}: {tail[0][len('error:'):].strip()}"
    return text.replace("Unimplemented keys", "keywords this engine cannot enforce")
