"""The xgrammar grammar backend: JSON schemas compiled by xgrammar with the contract's settings."""

from __future__ import annotations

import json
from typing import Any

from schemabuild.errors import GrammarError
from schemabuild.inference.grammars import GrammarCache, allowed_ids, compile_settings, engine_error

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


def compile_with(compiler, schema_json: str | None):
    """Compile a schema's JSON text (None = the json_object grammar) with an xgrammar GrammarCompiler."""
    if schema_json is None:
        return compiler.compile_grammar(JSON_OBJECT_EBNF)
    s = compile_settings()
    return compiler.compile_json_schema(schema_json, any_whitespace=s["any_whitespace"], separators=s["separators"],
                                        strict_mode=s["strict"])


class Matcher:
    """An xgrammar GrammarMatcher behind the backend protocol."""

    def __init__(self, grammar, stop_ids: list[int], vocab_size: int):
        import xgrammar as xgr

        self.m = xgr.GrammarMatcher(grammar)
        self.stop_ids, self.vocab_size = stop_ids, vocab_size

    def fill_mask(self, bitmask, row: int) -> None:
        self.m.fill_next_token_bitmask(bitmask, row)

    def accept(self, token: int) -> bool:
        return self.m.accept_token(token)

    def rollback(self, n: int) -> None:
        self.m.rollback(n)

    def forced_text(self) -> str:
        return self.m.find_jump_forward_string()

    def only_stop_left(self, bitmask, row: int) -> bool:
        if self.m.is_terminated():
            return True
        if not self.m.is_completed():
            return False
        self.m.fill_next_token_bitmask(bitmask, row)
        return set(allowed_ids(bitmask, row, self.vocab_size).tolist()) <= set(self.stop_ids)


class Backend:
    """xgrammar for one tokenizer: compiles (cached), matchers, masks."""

    name = "xgrammar"

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        import xgrammar as xgr

        self.vocab_size, self.stop_ids = vocab_size, list(stop_ids)
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_ids)
        self.compiler = xgr.GrammarCompiler(self.info)
        self.cache = GrammarCache()

    def compile(self, schema: dict | None) -> Any:
        return self.cache.get_or_compile(schema, lambda: self._compile(schema))

    def _compile(self, schema: dict | None):
        try:
            return compile_with(self.compiler, None if schema is None else json.dumps(schema))
        except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError with a C++ location prefix
            raise GrammarError(f"unsupported or invalid JSON schema: {engine_error(exc)}") from None

    def matcher(self, grammar) -> Matcher:
        return Matcher(grammar, self.stop_ids, self.vocab_size)

    def allocate_mask(self, rows: int):
        import xgrammar as xgr

        return xgr.allocate_token_bitmask(rows, self.vocab_size)

    def apply_mask(self, logits, bitmask, rows: list[int]) -> None:
        import xgrammar as xgr

        xgr.apply_token_bitmask_inplace(logits, bitmask[: logits.shape[0]].to(logits.device, non_blocking=True),
                                        indices=rows)

    def token_bytes(self) -> list[bytes]:
        return list(self.info.decoded_vocab)

    def child_spec(self) -> tuple[str, str]:
        return self.name, self.info.serialize_json()

    def load(self, payload: str):
        import xgrammar as xgr

        return xgr.CompiledGrammar.deserialize_json(payload, self.info)


def child_compiler(tokenizer_spec: str):
    """In a compile child: schema JSON text (None = json_object) → serialized grammar; the jump-forward search runs
    once on the fresh grammar too, under the child's limits."""
    import xgrammar as xgr

    info = xgr.TokenizerInfo.deserialize_json(tokenizer_spec)
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def run(schema_json: str | None) -> str:
        grammar = compile_with(compiler, schema_json)
        xgr.GrammarMatcher(grammar).find_jump_forward_string()  # must also stay inside the limits
        return grammar.serialize_json()

    return run
