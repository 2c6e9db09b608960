"""Real-world-like schemas through the server's schema path, on both grammar backends (xgrammar, llguidance).

    HF_HUB_OFFLINE=1 python bench/schema_sample.py [--per-kind 40] [--walks 10] [--backends xgrammar,llguidance]

No network here, so the sample is generated, not downloaded: seeded families shaped like public collections
(function-calling tool parameters, Kubernetes-style resources with $defs and allOf, JSON Schema Store-style
config files with anyOf/oneOf/patternProperties, GitHub-style hard cases with $ref recursion and keywords
beside combinators, allOf members with their own annotations), plus hostile variants. For each backend and schema:
the server's walk for that engine (refused + reason, or the schema it compiles), the bounded compile (GrammarPool:
a child process for xgrammar, in process for llguidance; cold cache), then random walks under the grammar's token
mask (random allowed tokens until only a stop is left), each result validated with jsonschema against the ORIGINAL
schema: valid (every finished walk valid), invalid (one was not: the server would answer 422), cut off (no walk
finished within 160 tokens). Mask time is per token of the walks. Numbers go to BENCHMARKS.md.
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


def annotated_allof(r: random.Random) -> dict:
    """allOf members that each carry their own annotations (titles, descriptions, x-* editor hints, examples)."""
    members = []
    for i in range(r.randint(2, 3)):
        members.append({"type": "object", "title": f"part {i}", "description": f"the {i}th part",
                        "x-intellij-html-description": f"<b>{i}</b>", "examples": [{f"f{i}": i}],
                        "$comment": f"member {i}", "properties": {f"f{i}": {"type": "integer", "default": i}}})
    return {"allOf": members, "required": ["f0"]}


FAMILIES = {"function-calling": function_calling, "kubernetes-like": kubernetes, "schemastore-like": schemastore,
            "github-hard-like": github_hard, "annotated-allof": annotated_allof}


def random_walk(backend, grammar, rng: random.Random, tokenizer, printable: list, mask_times: list,
                max_tokens: int = 160) -> str | None:
    """Random allowed tokens under the backend's mask until only a stop token is left (or a coin says stop where a
    stop token is allowed); the text, or None when cut off. Each mask's time goes to `mask_times`."""
    import numpy as np

    from schemabuild.inference.grammars import allowed_ids

    m = backend.matcher(grammar)
    mask = backend.allocate_mask(1)
    stop_ids = set(backend.stop_ids)
    ids = []
    for _ in range(max_tokens):
        t0 = time.perf_counter()
        m.fill_mask(mask, 0)
        mask_times.append(time.perf_counter() - t0)
        allowed = allowed_ids(mask, 0, backend.vocab_size)
        allowed_set = set(allowed.tolist())
        stops = [t for t in stop_ids if t in allowed_set]
        if stops and (rng.random() < 0.5 or len(allowed) == len(stops)):
            return tokenizer.decode(ids)
        choices = [t for t in allowed.tolist() if t not in stop_ids and printable[t]] if len(allowed) < 4096 else None
        if choices is None:  # a wide mask: sample until a printable allowed token comes up
            choices = [int(t) for t in np.asarray(allowed)[rng.sample(range(len(allowed)), min(256, len(allowed)))]
                       if t not in stop_ids and printable[t]]
        if not choices:
            return None
        tok = rng.choice(choices)
        if not m.accept(tok):
            return None
        ids.append(tok)
    return None


def tokenizer_for_bench(root: Path):
    """The real base's tokenizer when it is cached (a 49k vocabulary, as served), else the tests' tiny one."""
    from transformers import AutoTokenizer

    real = Path.home() / ".cache" / "schemabuild" / "bases" / "smollm2-135m"
    if (real / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(real), "smollm2-135m"
    from tests.serving import build_quick

    return AutoTokenizer.from_pretrained(build_quick(root).model_dir), "tiny"


def run_backend(name: str, tok, vocab_size: int, schemas: list, walks: int) -> dict:
    """One backend over the sample, through the server's path: the walk for this engine, the bounded compile
    (GrammarPool, cold cache), then random walks under the mask validated against the ORIGINAL schema."""
    import jsonschema

    from schemabuild.errors import GrammarError
    from schemabuild.inference.grammars import make_backend
    from schemabuild.serve.compiler import GrammarPool
    from schemabuild.serve.schemas import SchemaRefused, prepare_schema

    stop_ids = [tok.eos_token_id]
    backend = make_backend(name, tok, vocab_size, stop_ids)
    printable = [all(c >= 0x20 for c in t) for t in backend.token_bytes()]
    pool = GrammarPool(backend, timeout_s=10, memory_mb=2048)
    pool.warm()
    rows, reasons, compile_s, mask_s, unsound = Counter(), Counter(), [], [], []
    rng = random.Random(0)
    for family, schema in schemas:
        t0 = time.perf_counter()
        try:
            prepared, _ = prepare_schema(schema, engine=name)
            grammar = pool.compile(prepared)
        except (SchemaRefused, GrammarError) as exc:
            rows["refused"] += 1
            why = getattr(exc, "keyword", None) or ("timeout" if "time limit" in str(exc) else "compile")
            reasons[why] += 1
            if why == "compile" and len(reasons) < 40:
                reasons[f"compile: {str(exc)[40:110]}"] += 1
            continue
        compile_s.append(time.perf_counter() - t0)
        outs = [random_walk(backend, grammar, rng, tok, printable, mask_s) for _ in range(walks)]
        done = [w for w in outs if w is not None]
        validator = jsonschema.validators.validator_for(schema)(schema)
        bad = [w for w in done if not _valid(validator, w)]
        if bad:
            rows["invalid"] += 1  # the server checks every output: these would be 422s, never 200s
            unsound.append((family, bad[0][:80]))
        elif done:
            rows["valid"] += 1
        else:
            rows["cut off"] += 1
    pool.close()
    return {"rows": rows, "reasons": reasons, "compile_s": compile_s, "mask_s": mask_s, "unsound": unsound}


def _valid(validator, text: str) -> bool:
    try:
        return validator.is_valid(json.loads(text))
    except ValueError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-kind", type=int, default=40)
    ap.add_argument("--walks", type=int, default=10)
    ap.add_argument("--backends", default="xgrammar,llguidance")
    args = ap.parse_args()
    tok, tok_name = tokenizer_for_bench(Path(tempfile.mkdtemp()))
    vocab_size = len(tok)
    schemas = [(family, make(random.Random(f"{family}{i}"))) for family, make in FAMILIES.items()
               for i in range(args.per_kind)]
    print(f"sample: {len(schemas)} generated schemas, {args.per_kind} per family ({', '.join(FAMILIES)}); "
          f"tokenizer {tok_name} ({vocab_size} tokens); {args.walks} random walks per schema; both backends in this "
          "run, one after the other, on the same schemas", flush=True)

    def pct(xs, q, scale=1000.0, unit="ms"):
        return f"{statistics.quantiles(xs, n=100)[q - 1] * scale:.2f} {unit}" if len(xs) > 1 else "-"

    for name in args.backends.split(","):
        out = run_backend(name, tok, vocab_size, schemas, args.walks)
        rows, n = out["rows"], len(schemas)
        print(f"{name}: valid {rows['valid']}/{n} ({100 * rows['valid'] / n:.0f} %), refused {rows['refused']}, "
              f"grammar let out invalid JSON (422, never a 200) {rows['invalid']}, walks all cut off {rows['cut off']}")
        print(f"  compile (walk + bounded compile, cold) p50 {pct(out['compile_s'], 50)}, p99 {pct(out['compile_s'], 99)}; "
              f"mask per token p50 {pct(out['mask_s'], 50, 1e6, 'us')}, mean "
              f"{statistics.mean(out['mask_s']) * 1e6 if out['mask_s'] else 0:.1f} us")
        print(f"  refusals: {dict(out['reasons'].most_common())}")
        for family, text in out["unsound"][:5]:
            print(f"  UNSOUND {family}: {text!r}")


if __name__ == "__main__":
    main()
