"""Grammar backends: one small protocol, one cache, one factory (as vLLM's `v1/structured_output` and sglang's
`base_grammar_backend.py`). A new grammar engine is one new file, `backend_<name>.py`, and one line in `BACKENDS`.

    backend = make_backend("xgrammar", tokenizer, vocab_size, stop_ids)
    grammar = backend.compile(schema)          # cached by schema hash, failures too; GrammarError when refused
    matcher = backend.matcher(grammar)         # per sequence: fill_mask · accept · rollback · forced_text · ...

Both engines compile with the contract's settings (`contract.GRAMMAR`: compact separators, no free whitespace,
strict) and write the same bitmask layout (int32 words, bit i of word j = token 32 j + i), so the decoder is
engine-agnostic. `schema=None` compiles the json_object grammar: any JSON object, compact.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from typing import Any, Callable, Protocol

from schemabuild.contract import GRAMMAR
from schemabuild.errors import GrammarError
from schemabuild.inference.lru import LRU

BACKENDS = {"xgrammar": "schemabuild.inference.backend_xgrammar",
            "llguidance": "schemabuild.inference.backend_llguidance"}
DEFAULT_BACKEND = "xgrammar"
CACHE_SIZE = 256


class Matcher(Protocol):
    """One sequence's position in its grammar."""

    def fill_mask(self, bitmask, row: int) -> None:
        """Write the tokens allowed next into row `row` of `bitmask`."""

    def accept(self, token: int) -> bool:
        """Advance by `token`; False (and no change) when the grammar does not allow it."""

    def rollback(self, n: int) -> None:
        """Undo the last `n` accepted tokens."""

    def forced_text(self) -> str:
        """The text the grammar forces next, whatever the model picks ("" when none): jump-forward's input."""

    def only_stop_left(self, bitmask, row: int) -> bool:
        """The grammar is complete and admits nothing but a stop token (the output is decided)."""


class GrammarBackend(Protocol):
    """A grammar engine bound to one tokenizer."""

    name: str
    vocab_size: int
    stop_ids: list[int]
    cache: "GrammarCache"

    def compile(self, schema: dict | None) -> Any:
        """The compiled grammar for `schema` (cached); GrammarError when the engine refuses it."""

    def matcher(self, grammar: Any) -> Matcher: ...

    def allocate_mask(self, rows: int): ...

    def apply_mask(self, logits, bitmask, rows: list[int]) -> None:
        """Set the logits of the tokens `bitmask` forbids to -inf, for the rows listed (bitmask row i = logits row i)."""

    def token_bytes(self) -> list[bytes]:
        """Each token id's bytes, as the engine decodes them."""

    def child_spec(self) -> tuple[str, str] | None:
        """(backend name, serialized tokenizer): what a compile child process needs (`child_compiler`); None for an
        engine that bounds its own work and compiles in process (llguidance)."""

    def load(self, payload: str) -> Any:
        """A grammar from what a compile child returned."""


class GrammarCache:
    """Compiled grammars (and refusals, so a bad schema costs its compile once) by schema key, least recently used
    dropped: the one grammar cache, shared by in-process compiles and the server's bounded compile children."""

    def __init__(self, size: int = CACHE_SIZE):
        self.entries = LRU(size)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str):
        """The grammar for `key`, None when not cached; raises the cached GrammarError for a refused schema."""
        hit = self.entries.get(key)
        if isinstance(hit, GrammarError):
            raise hit
        return hit

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def put(self, key: str, grammar_or_error: Any) -> None:
        self.entries.put(key, grammar_or_error)

    def get_or_compile(self, schema: dict | None, compile_fn: Callable[[], Any]) -> Any:
        key = grammar_key(schema)
        if key in self.entries:
            return self.get(key)
        try:
            grammar = compile_fn()
        except GrammarError as exc:
            self.put(key, exc)
            raise
        self.put(key, grammar)
        return grammar


def make_backend(name: str, tokenizer, vocab_size: int, stop_ids: list[int]) -> GrammarBackend:
    """The grammar backend `name` ("xgrammar" or "llguidance") for this tokenizer."""
    if name not in BACKENDS:
        raise GrammarError(f"unknown grammar backend {name!r} (choose from {', '.join(BACKENDS)})")
    module = importlib.import_module(BACKENDS[name])
    return module.Backend(tokenizer, vocab_size, stop_ids)


def child_compiler(name: str, tokenizer_spec: str) -> Callable[[str | None], str]:
    """In a compile child process: a function from a schema's JSON text (None = json_object) to a grammar payload
    (for `GrammarBackend.load`), raising on refusal."""
    return importlib.import_module(BACKENDS[name]).child_compiler(tokenizer_spec)


def grammar_key(schema: dict | None) -> str:
    """The cache key of a schema (None = the json_object grammar); GrammarError when it is not a JSON object."""
    if schema is None:
        return "json"
    if not isinstance(schema, dict):
        raise GrammarError(f"schema must be a JSON object, got {type(schema).__name__}")
    try:
        return hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()[:16]
    except (TypeError, ValueError) as exc:
        raise GrammarError(f"schema is not JSON-serialisable: {exc}") from None


def compile_settings() -> dict:
    """The contract's grammar settings (`contract.GRAMMAR`), as every backend reads them."""
    return {"any_whitespace": bool(GRAMMAR["any_whitespace"]), "separators": tuple(GRAMMAR["separators"]),
            "strict": bool(GRAMMAR["strict"])}


def engine_error(exc: BaseException) -> str:
    """The first line of an engine's error, without a C++/Rust location prefix."""
    text = str(exc).strip()
    msg = text.splitlines()[0] if text else type(exc).__name__
    return msg.split(": ", 1)[-1]


def allowed_ids(bitmask, row: int, vocab_size: int):
    """The token ids row `row` of `bitmask` allows (a numpy array)."""
    import numpy as np

    bits = np.unpackbits(bitmask[row].numpy().view(np.uint8), bitorder="little")[:vocab_size]
    return np.nonzero(bits)[0]


def apply_bitmask(logits, bitmask, rows: list[int]) -> None:
    """-inf for every token `bitmask` forbids, in the listed rows (plain torch; the layout both engines write)."""
    import numpy as np
    import torch

    vocab = logits.shape[-1]
    packed = bitmask[rows].numpy().view(np.uint8)
    allowed = np.unpackbits(packed, axis=1, bitorder="little")[:, :vocab].astype(bool)
    index = torch.tensor(rows, device=logits.device)
    block = logits.index_select(0, index)
    block.masked_fill_(~torch.from_numpy(allowed).to(logits.device), float("-inf"))
    logits.index_copy_(0, index, block)


def printable_mask(token_bytes: list[bytes], vocab_size: int, stop_ids: list[int]):
    """Bitmask of the tokens without raw control bytes (< 0x20); stop tokens kept.

    Compact canonical JSON never contains one, but xgrammar 0.2.8 compiles strings with minLength/maxLength to
    `[^"\\\r\n]`, which admits raw control characters (invalid JSON); the decoder ANDs this into schema masks
    (for every backend, so that they choose among the same tokens).
    """
    import numpy as np
    import torch

    ok = np.ones(((vocab_size + 31) // 32) * 32, dtype=bool)
    stops = set(stop_ids)
    for i, tok in enumerate(token_bytes[:vocab_size]):
        if i not in stops and any(c < 0x20 for c in tok):
            ok[i] = False
    return torch.from_numpy(np.packbits(ok, bitorder="little").view(np.int32).copy())
