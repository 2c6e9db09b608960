"""Grammars: a JSON schema (or json_object mode) compiled by xgrammar once per tokenizer, cached (LRU).

Compact separators and no free whitespace, as in the canonical training targets; the decoder (`decode.py`) and
the server's bounded compile worker (`serve/compiler.py`) both compile through here.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
from typing import Any

from schemabuild.errors import GrammarError

_COMPILERS: dict[int, tuple[Any, Any]] = {}
_GRAMMARS: "collections.OrderedDict[tuple[int, str], Any]" = collections.OrderedDict()
_GRAMMAR_CACHE_SIZE = 256
_GRAMMAR_LOCK = threading.Lock()


# json_object mode: any JSON object (never a bare array or scalar, as OpenAI's mode promises), written with the
# same compact separators and no free whitespace as the canonical training targets.
JSON_OBJECT_EBNF = r"""
root ::= object
value ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" (member ("," member)*)? "}"
member ::= string ":" value
array ::= "[" (value ("," value)*)? "]"
string ::= "\"" char* "\""
char ::= [^"\\\x00-\x1f] | "\\" escape
escape ::= ["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F]
number ::= "-"? ("0" | [1-9] [0-9]*) ("." [0-9]+)? ([eE] [+-]? [0-9]+)?
"""


def grammar_key(schema: dict | None) -> str:
    """The cache key of a schema (None = the json_object grammar)."""
    if schema is None:
        return "json"
    return hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()[:16]


def compile_grammar(tokenizer_info, schema: dict | None):
    """The xgrammar CompiledGrammar for `schema`, compiled once per (tokenizer, schema) and cached.

    Compact separators and no free whitespace, as in the canonical training targets. None compiles the
    JSON-object grammar (json_object mode). Raises GrammarError for a schema xgrammar rejects.
    """
    import xgrammar as xgr

    if schema is not None and not isinstance(schema, dict):
        raise GrammarError(f"schema must be a JSON object, got {type(schema).__name__}")
    try:
        key = (id(tokenizer_info), grammar_key(schema))
    except (TypeError, ValueError) as exc:
        raise GrammarError(f"schema is not JSON-serialisable: {exc}") from None
    with _GRAMMAR_LOCK:
        if key in _GRAMMARS:
            _GRAMMARS.move_to_end(key)
            return _GRAMMARS[key]
        if id(tokenizer_info) not in _COMPILERS:
            # Holding tokenizer_info keeps its id from being reused by another object.
            _COMPILERS[id(tokenizer_info)] = (tokenizer_info, xgr.GrammarCompiler(tokenizer_info))
        compiler = _COMPILERS[id(tokenizer_info)][1]
        try:
            if schema is None:
                compiled = compiler.compile_grammar(JSON_OBJECT_EBNF)
            else:
                compiled = compiler.compile_json_schema(
                    json.dumps(schema), any_whitespace=False, separators=(",", ":"), strict_mode=True
                )
        except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError with a C++ location prefix
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GrammarError(f"unsupported or invalid JSON schema: {msg.split(': ', 1)[-1]}") from None
        _GRAMMARS[key] = compiled
        if len(_GRAMMARS) > _GRAMMAR_CACHE_SIZE:
            _GRAMMARS.popitem(last=False)
        return compiled


def grammar_cache_size() -> int:
    return len(_GRAMMARS)


def printable_mask(tokenizer_info, vocab_size: int, stop_ids: list[int]):
    """Bitmask (xgrammar's int32 layout) of the tokens without raw control bytes (< 0x20); stop tokens kept.

    Compact canonical JSON never contains one, but xgrammar 0.2.8 compiles strings with minLength/maxLength to
    `[^"\\\r\n]`, which admits raw control characters (invalid JSON); the decoder ANDs this into schema masks.
    """
    import numpy as np
    import torch

    ok = np.ones(((vocab_size + 31) // 32) * 32, dtype=bool)
    for i, tok in enumerate(tokenizer_info.decoded_vocab[:vocab_size]):
        if any(c < 0x20 for c in tok) and i not in stop_ids:
            ok[i] = False
    return torch.from_numpy(np.packbits(ok, bitorder="little").view(np.int32).copy())


def token_splits(tokenizer_info, vocab_size: int, stop_ids: list[int]):
    """(first byte of each token, -1 for special ones; for every proper prefix u of a vocabulary token, the set of
    bytes that follow u in some token; the longest token in bytes): jump-forward's token-boundary check."""
    import numpy as np

    special = set(tokenizer_info.special_token_ids) | set(stop_ids)
    first = np.full(vocab_size, -1, dtype=np.int16)
    splits: dict[bytes, set[int]] = {}
    longest = 1
    for i, tok in enumerate(tokenizer_info.decoded_vocab[:vocab_size]):
        if i in special or not tok:
            continue
        first[i] = tok[0]
        longest = max(longest, len(tok))
        for k in range(1, len(tok)):
            splits.setdefault(tok[:k], set()).add(tok[k])
    return first, splits, longest
