"""Real-world-like schemas through the server's schema path, xgrammar alone and llguidance alone.

    python bench/schema_sample.py [--per-kind 40] [--walks 20]

No network here, so the sample is generated, not downloaded: seeded families shaped like public collections
(function-calling tool parameters, Kubernetes-style resources with $defs and allOf, JSON Schema Store-style
config files with anyOf/oneOf/patternProperties, GitHub-style hard cases with $ref recursion and keywords
beside combinators), plus hostile variants. For each schema: the server's walk (refused + reason, or the
schema it compiles), compile time in a GrammarPool child, and soundness by random walks under the grammar's
token mask (random allowed tokens until the grammar completes), each result validated with jsonschema
against the ORIGINAL schema. Prints one table; numbers go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def function_calling(r: random.Random) -> dict:
    props = {}
    for i in range(r.randint(1, 6)):
        kind = r.choice(["string", "integer", "number", "boolean", "enum", "array", "object"])
        name = r.choice(["query", "city", "unit", "limit", "date", "tags", "options", "id", "lang"]) + str(i)
        if kind == "enum":
            props[name] = {"type": "string", "enum": r.sample(["c", "f", "k", "auto", "none", "c"], 3)}
        elif kind == "array":
            props[name] = {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": r.randint(1, 5)}
        elif kind == "object":
            props[name] = {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                           "required": ["x"]}
        elif kind == "integer":
            props[name] = {"type": "integer", "minimum": 0, "maximum": r.choice([10, 100, 1000])}
        elif kind == "string":
            props[name] = r.choice([{"type": "string", "maxLength": 30}, {"type": "string", "format": "date"},
                                    {"type": "string", "pattern": "^[A-Z]{3}$"}])
        else:
            props[name] = {"type": kind}
    req = r.sample(sorted(props), r.randint(0, len(props)))
    return {"type": "object", "properties": props, "required": req, "additionalProperties": False}


def kubernetes(r: random.Random) -> dict:
    meta = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                             "labels": {"type": "object", "additionalProperties": {"type": "string",
                                                                                                   "maxLength": 10}}},
            "required": ["name"]}
    container = {"type": "object", "properties": {"image": {"type": "string", "maxLength": 30},
                                                  "ports": {"type": "array", "maxItems": 2, "items": {
                                                      "type": "object", "properties": {"containerPort": {
                                                          "type": "integer", "minimum": 1, "maximum": 65535}},
                                                      "required": ["containerPort"]}}},
                 "required": ["image"]}
    spec = {"allOf": [{"$ref": "#/definitions/base"},
                      {"type": "object", "properties": {"replicas": {"type": "integer", "minimum": 0}}}]}
    schema = {"definitions": {"meta": meta, "container": container,
                              "base": {"type": "object", "properties": {"containers": {
                                  "type": "array", "maxItems": 2, "items": {"$ref": "#/definitions/container"}}}}},
              "type": "object", "properties": {"apiVersion": {"const": "apps/v1"}, "kind": {"enum": ["Deployment"]},
                                               "metadata": {"$ref": "#/definitions/meta"}, "spec": spec},
              "required": ["apiVersion", "kind", "metadata"]}
    if r.random() < 0.3:
        schema["properties"]["status"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return schema


def schemastore(r: random.Random) -> dict:
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "config", "type": "object",
              "properties": {"version": {"oneOf": [{"type": "string", "maxLength": 10}, {"type": "integer"}]},
                             "extends": {"anyOf": [{"type": "string", "maxLength": 20},
                                                   {"type": "array", "maxItems": 3, "items": {"type": "string",
                                                                                              "maxLength": 20}}]},
                             "rules": {"type": "object", "patternProperties": {"^[a-z-]+$": {
                                 "enum": ["off", "warn", "error", 0, 1, 2]}}, "additionalProperties": False}},
              "additionalProperties": r.random() < 0.5}
    if r.random() < 0.4:
        schema["properties"]["env"] = {"type": "object", "properties": {"browser": {"type": "boolean"}},
                                       "dependencies": {"browser": ["node"]}}
    return schema


def github_hard(r: random.Random) -> dict:
    choice = r.randrange(6)
    if choice == 0:  # a tree: recursion with a finite instance
        return {"$defs": {"node": {"type": "object", "properties": {"value": {"type": "integer"}, "children": {
            "type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/node"}}}, "required": ["value"]}},
                "$ref": "#/$defs/node"}
    if choice == 1:  # keywords beside anyOf (xgrammar drops them; the walk merges them into each branch)
        return {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "maxLength": 5}},
                "required": ["a"], "anyOf": [{"required": ["b"]}, {"properties": {"a": {"minimum": 10}}}]}
    if choice == 2:
        return {"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "maxItems": 4}
    if choice == 3:
        return {"type": "object", "properties": {"kind": {"const": "a"}, "n": {"type": "integer"}},
                "required": ["kind"], "not": {"required": ["n"]}}
    if choice == 4:
        return {"oneOf": [{"type": "object", "properties": {"t": {"const": "x"}, "v": {"type": "integer"}},
                           "required": ["t"]},
                          {"type": "object", "properties": {"t": {"const": "y"}, "w": {"type": "boolean"}},
                           "required": ["t"]}]}
    return {"type": "object", "properties": {"properties": {"type": "string", "maxLength": 5},
                                             "required": {"type": "boolean"}}, "required": ["zz"]}


FAMILIES = {"function-calling": function_calling, "kubernetes-like": kubernetes, "schemastore-like": schemastore,
            "github-hard-like": github_hard}


def random_walk(grammar, info, rng: random.Random, tokenizer, max_tokens: int = 160) -> str | None:
    """Random allowed tokens under the mask until the grammar completes; the text, or None when cut off."""
    import numpy as np
    import xgrammar as xgr

    stop_ids, printable = _vocab(info)
    m = xgr.GrammarMatcher(grammar)
    mask = xgr.allocate_token_bitmask(1, info.vocab_size)
    ids = []
    for _ in range(max_tokens):
        if m.is_terminated():
            break
        m.fill_next_token_bitmask(mask)
        bits = np.unpackbits(mask[0].numpy().view(np.uint8), bitorder="little")[: info.vocab_size]
        allowed = np.nonzero(bits)[0].tolist()
        stops = [t for t in allowed if t in stop_ids]
        if stops and (rng.random() < 0.5 or len(allowed) == len(stops)):
            return tokenizer.decode(ids)
        choices = [t for t in allowed if t not in stop_ids and printable[t]]
        if not choices:
            return None
        tok = rng.choice(choices)
        m.accept_token(tok)
        ids.append(tok)
    return tokenizer.decode(ids) if m.is_terminated() else None


_VOCAB: dict = {}


def _vocab(info) -> tuple[set, list]:
    """(stop token ids, printable flag per token id), once per TokenizerInfo: its properties rebuild Python lists
    on every access (4 ms for decoded_vocab), which made the walks take minutes per schema."""
    if id(info) not in _VOCAB:
        _VOCAB[id(info)] = (set(info.stop_token_ids), [all(c >= 0x20 for c in t) for t in info.decoded_vocab])
    return _VOCAB[id(info)]


def main() -> None:
    import jsonschema
    import xgrammar as xgr
    from transformers import AutoTokenizer

    from schemabuild.errors import GrammarError
    from schemabuild.serve.compiler import GrammarPool
    from schemabuild.serve.schemas import SchemaRefused, prepare_schema
    from tests.serving import build_quick

    ap = argparse.ArgumentParser()
    ap.add_argument("--per-kind", type=int, default=40)
    ap.add_argument("--walks", type=int, default=20)
    args = ap.parse_args()
    quick = build_quick(Path(tempfile.mkdtemp()))
    tok = AutoTokenizer.from_pretrained(quick.model_dir)
    info = xgr.TokenizerInfo.from_huggingface(tok, stop_token_ids=[tok.eos_token_id])
    pool = GrammarPool(info, timeout_s=10, memory_mb=2048)
    pool.warm()
    plain = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    try:
        from llguidance import LLMatcher
    except ImportError:
        LLMatcher = None

    rows, reasons = Counter(), Counter()
    t_server, t_xgr, t_llg = [], [], []
    unsound_server, unsound_xgr = [], []
    rng = random.Random(0)
    for family, make in FAMILIES.items():
        for i in range(args.per_kind):
            schema = make(random.Random(f"{family}{i}"))
            rows["schemas"] += 1
            print(f"  {family} {i}", file=sys.stderr, flush=True)
            text = json.dumps(schema)
            t0 = time.perf_counter()  # xgrammar alone, as written (what the server used to do, minus the rewrite)
            try:
                raw = plain.compile_json_schema(text, any_whitespace=False, separators=(",", ":"), strict_mode=True)
                t_xgr.append(time.perf_counter() - t0)
                rows["xgrammar compiles"] += 1
                if any(w is not None and not jsonschema.validators.validator_for(schema)(schema).is_valid(json.loads(w))
                       for w in (random_walk(raw, info, rng, tok) for _ in range(args.walks))):
                    unsound_xgr.append(family)
            except RuntimeError:
                pass
            if LLMatcher is not None:
                t0 = time.perf_counter()
                err, _ = LLMatcher.validate_grammar_with_warnings(LLMatcher.grammar_from_json_schema(text)) \
                    if hasattr(LLMatcher, "validate_grammar_with_warnings") else (
                    not LLMatcher.validate_grammar(LLMatcher.grammar_from_json_schema(text))[0], None)
                t_llg.append(time.perf_counter() - t0)
                rows["llguidance accepts"] += not err
            t0 = time.perf_counter()
            try:
                prepared, _ = prepare_schema(schema)
                grammar = pool.compile(prepared)
            except (SchemaRefused, GrammarError) as exc:
                rows["server refused"] += 1
                reasons[getattr(exc, "keyword", "compile")] += 1
                continue
            t_server.append(time.perf_counter() - t0)
            rows["server compiled"] += 1
            walks = [random_walk(grammar, info, rng, tok) for _ in range(args.walks)]
            done = [w for w in walks if w is not None]
            bad = [w for w in done if not jsonschema.validators.validator_for(schema)(schema).is_valid(json.loads(w))]
            rows["walk outputs valid"] += len(done) - len(bad)
            rows["walk outputs INVALID"] += len(bad)
            if bad:
                unsound_server.append((family, schema, bad[0]))
    pool.close()

    def pct(xs, q):
        return f"{statistics.quantiles(xs, n=100)[q - 1] * 1000:.1f} ms" if len(xs) > 1 else "-"

    print(f"sample: {rows['schemas']} generated schemas, {args.per_kind} per family: {', '.join(FAMILIES)}")
    for key in ("server compiled", "server refused", "walk outputs valid", "walk outputs INVALID",
                "xgrammar compiles", "llguidance accepts"):
        print(f"  {key:24s} {rows[key]}")
    print(f"  refusal reasons          {dict(reasons)}")
    print(f"  schemas the server's grammar let out invalid JSON for: {len(unsound_server)}; "
          f"xgrammar alone (as written): {len(unsound_xgr)} {dict(Counter(unsound_xgr))}")
    print(f"  compile p50/p99: server (walk + child compile) {pct(t_server, 50)} / {pct(t_server, 99)}; "
          f"xgrammar alone {pct(t_xgr, 50)} / {pct(t_xgr, 99)}; llguidance alone {pct(t_llg, 50)} / {pct(t_llg, 99)}")
    for family, schema, out in unsound_server:
        err = next(jsonschema.validators.validator_for(schema)(schema).iter_errors(json.loads(out)))
        print(f"  UNSOUND {family}: {err.json_path}: {err.message[:120]} | {out[:80]!r}")


if __name__ == "__main__":
    main()
