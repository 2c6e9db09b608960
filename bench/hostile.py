"""Hostile battery against a real server process under a 4 GB address-space cap (issue 11's goals).

    python bench/hostile.py [--fuzz 320] [--latency-samples 8] [--budget-s 480]

Starts `schemabuild serve quick_pick` (an untrained tiny model, as in tests/serving.py) as its own process on
127.0.0.1 under `prlimit --as=4294967296`, then sends, one at a time, a battery of hostile requests: recursive,
huge and pathological response_format schemas, malformed bodies, extreme numbers, bad Unicode, huge bodies,
bad auth, plus `--fuzz` seeded random schemas built from every keyword. For each answer it checks:
- no 5xx;
- a 200 on a strict json_schema that finished ("stop") validates with jsonschema against the client's schema
  (cut off at max_tokens is counted apart: the untrained model may loop inside an unbounded string);
- a refusal is a 4xx with an OpenAI-style one-line error; a 400 invalid_schema names the keyword or limit
  the case expects (fuzz: a keyword that occurs in the schema, or "limit").
At the end the process must still be alive and answer a normal request. Then, side by side in the same run,
a normal request's latency when idle vs. while another client's pathological (slow but accepted) schema is
compiling, interleaved sample by sample (goal: p50 and max no more than +100 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHAT = "/v1/chat/completions"
PREDICT = "/v1/tasks/quick_pick/predict"
KEY = "hostile-bench-key"
MEMORY_CAP = 4 * 2**30
SCHEMA_PARAM = "response_format.json_schema.schema"


# -- the cases: (name, path, body as dict | raw bytes, expectation) --

def chat(schema=None, strict=None, fmt=None, max_tokens=48, **extra) -> dict:
    body = {"model": "quick_pick", "messages": [{"role": "user", "content": "play jazz"}], "max_tokens": max_tokens,
            **extra}
    if schema is not None:
        spec = {"name": "x", "schema": schema}
        if strict is not None:
            spec["strict"] = strict
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif fmt is not None:
        body["response_format"] = fmt
    return body


class Case:
    def __init__(self, name: str, body, path: str = CHAT, words: tuple = (), headers: dict | None = None,
                 schema=None, strict: bool = True):
        self.name, self.body, self.path, self.words, self.headers = name, body, path, words, headers
        # the client's schema to validate a 200 against (None: no strict schema asked for)
        self.schema = schema if schema is not None else (
            body.get("response_format", {}).get("json_schema", {}).get("schema")
            if isinstance(body, dict) and isinstance(body.get("response_format"), dict)
            and isinstance(body["response_format"].get("json_schema"), dict) else None)
        self.strict = strict


def schema_cases() -> list[Case]:
    """Pathological schemas (each in a few variants), as strict json_schema response formats."""
    cases = []

    def add(name, schema, words=(), max_tokens=48, strict=None):
        cases.append(Case(name, chat(schema, strict=strict, max_tokens=max_tokens), words=words,
                          strict=strict is not False))

    add("recursive child (issue's crash)", {"type": "object", "properties": {"child": {"$ref": "#"}}}, max_tokens=64)
    for mt in (1, 8, 256, 1024):
        add(f"recursive child max_tokens {mt}", {"type": "object", "properties": {"child": {"$ref": "#"}}},
            max_tokens=mt)
    add("recursive child required", {"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]},
        ("finite instance",))
    add("$ref #", {"$ref": "#"}, ("$ref",))
    add("$ref # in allOf", {"allOf": [{"$ref": "#"}]}, ("$ref", "finite", "allOf"))
    add("mutual recursion, no finite instance",
        {"$defs": {"a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/b"}}, "required": ["b"]},
                   "b": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "required": ["a"]}},
         "$ref": "#/$defs/a"}, ("finite instance",))
    add("recursive array min 1", {"$defs": {"n": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/n"}}},
                                  "$ref": "#/$defs/n"}, ("finite instance",))
    add("ref chain 500", {"$defs": {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(500)} |
                          {"d500": {"type": "integer"}}, "$ref": "#/$defs/d0"})
    add("ref to missing def", {"$ref": "#/$defs/nope"}, ("$ref", "nope"))
    add("remote ref", {"$ref": "http://127.0.0.1:1/schema.json"}, ("$ref",))
    for n in (1001, 2000, 6000, 10000, 100000):
        add(f"pattern [a-z]{{1,{n}}}", {"type": "string", "pattern": f"[a-z]{{1,{n}}}"}, ("repetition bound",))
    add("pattern nested repeats", {"type": "string", "pattern": "(([a-z]{1,999}){1,999}){1,999}"},
        ("repetition", "limit"))
    for n in (5000, 10000, 50000):
        add(f"enum {n} strings", {"type": "string", "enum": [f"v{i}" for i in range(n)]}, ("limit",))
    add("enum 10000 ints", {"enum": list(range(10000))}, ("limit",))
    add("not {}", {"not": {}}, ("not",))
    add("not const", {"type": "integer", "not": {"const": 3}}, ("not",))
    add("not, strict false", {"type": "integer", "not": {"const": 3}}, strict=False)
    add("allOf string+integer", {"allOf": [{"type": "string"}, {"type": "integer"}]}, ("allOf",))
    add("allOf min>max", {"allOf": [{"type": "integer", "minimum": 10}, {"maximum": 5}]},
        ("allOf", "minimum", "maximum"))
    add("enum wrong type", {"type": "integer", "enum": ["a", "b"]}, ("enum",))
    add("const wrong type", {"type": "integer", "const": "a"}, ("const",))
    for pat in ("^(?=a)b$", "^(?!a).$", "(?<=a)b", "(?<!a)b", "(a)\\1", "(?<x>a)\\k<x>"):
        add(f"lookaround {pat}", {"type": "string", "pattern": pat}, ("lookaround", "backreference", "pattern"))
    for pat in ("[", "a{2,1}", "(?P<", "*a", "\\"):
        add(f"broken pattern {pat}", {"type": "string", "pattern": pat}, ("pattern",))
    for kw, sub in (("if", {"if": {"type": "string"}, "then": {"maxLength": 2}}), ("uniqueItems",
                    {"type": "array", "uniqueItems": True}), ("contains", {"type": "array", "contains": {"const": 1}}),
                    ("dependencies", {"type": "object", "dependencies": {"a": ["b"]}}),
                    ("dependentRequired", {"type": "object", "dependentRequired": {"a": ["b"]}}),
                    ("propertyNames", {"type": "object", "propertyNames": {"maxLength": 1}})):
        add(f"ignored keyword {kw}", sub, (kw,))
    for kw, sub in (("minimum", {"type": "integer", "minimum": 5, "maximum": 1}),
                    ("minLength", {"type": "string", "minLength": 5, "maxLength": 1}),
                    ("minItems", {"type": "array", "minItems": 5, "maxItems": 1}),
                    ("minProperties", {"type": "object", "minProperties": 3, "maxProperties": 1}),
                    ("exclusiveMinimum", {"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 1}),
                    ("required", {"type": "object", "required": ["a"], "additionalProperties": False}),
                    ("enum", {"enum": []}), ("type", {"type": []}),
                    ("multipleOf", {"type": "integer", "multipleOf": 0})):
        add(f"unsatisfiable {kw}", sub, (kw,))
    for depth in (50, 300, 3000):
        text = '{"type":"object","properties":{"a":' * depth + '{"type":"integer"}' + '},"required":["a"]}' * depth
        cases.append(Case(f"nested objects {depth}", raw_schema(text), words=("nested", "depth", "limit", "size"),
                          schema=json.loads(text) if depth < 500 else None))
    for depth in (50, 3000):
        text = '{"type":"array","minItems":1,"maxItems":1,"items":' * depth + '{"type":"integer"}' + "}" * depth
        cases.append(Case(f"nested arrays {depth}", raw_schema(text), words=("nested", "depth", "limit", "size"),
                          schema=json.loads(text) if depth < 500 else None))
    add("anyOf 3000 branches", {"anyOf": [{"const": i} for i in range(3000)]}, ("limit", "anyOf", "size"))
    add("5000 properties", {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(5000)},
                            "required": [f"p{i}" for i in range(5000)]}, ("limit", "size", "instance"))
    add("schema 300 KB", {"type": "string", "description": "x" * 300_000}, ("size", "limit"))
    add("minLength 100000", {"type": "string", "minLength": 100000}, ("limit", "instance", "minLength"))
    add("minItems 100000", {"type": "array", "minItems": 100000}, ("limit", "instance", "minItems"))
    add("maxLength 1e9", {"type": "string", "maxLength": 10**9}, max_tokens=16)
    add("huge minimum", {"type": "integer", "minimum": 10**300}, ("minimum", "limit", "number"))
    add("minimum 1e308", {"type": "number", "minimum": 1e308}, ("minimum", "limit", "number"))
    add("multipleOf 1e-320", {"type": "number", "multipleOf": 1e-320}, ("multipleOf", "number", "limit"))
    add("oneOf overlapping", {"oneOf": [{"type": "integer"}, {"type": "number"}]}, ("oneOf",))
    add("type foo", {"type": "foo"}, ("type",))
    add("minimum a string", {"type": "integer", "minimum": "x"}, ("minimum",))
    add("required not a list", {"type": "object", "required": "a"}, ("required",))
    add("property named properties", {"type": "object", "properties": {"properties": {"type": "boolean"},
                                                                        "required": {"const": 1}},
                                      "required": ["properties"]})
    add("required outside properties", {"type": "object", "properties": {"a": {"type": "integer"}},
                                        "required": ["a", "zz"]})
    add("duplicate enum", {"enum": ["a", "a", "b"]})
    add("keywords beside anyOf", {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
                                  "anyOf": [{"properties": {"a": {"minimum": 10}}}, {"properties": {"a": {
                                      "maximum": -10}}}]})
    add("emoji const", {"const": "\U0001F600\u0000\u202e"})
    add("emoji keys", {"type": "object", "properties": {"\U0001F600": {"const": 1}, "\u0000": {"const": 2}},
                       "required": ["\U0001F600", "\u0000"]})
    add("ReDoS pattern", {"type": "string", "pattern": "^(a+)+$", "maxLength": 40})
    add("format date-time", {"type": "object", "properties": {"t": {"type": "string", "format": "date-time"},
                                                              "e": {"type": "string", "format": "email"}},
                             "required": ["t", "e"]})
    add("prefixItems", {"type": "array", "prefixItems": [{"const": 1}, {"type": "string", "maxLength": 3}],
                        "items": False})
    add("boolean subschemas", {"type": "object", "properties": {"a": True, "b": False}, "required": ["a"]})
    add("nullable union", {"type": ["string", "null"], "maxLength": 4})
    add("integer bounds", {"type": "integer", "minimum": -3, "exclusiveMaximum": 4})
    add("number multipleOf", {"type": "number", "multipleOf": 0.25, "minimum": 0, "maximum": 2})
    return cases


def raw_schema(schema_text: str) -> bytes:
    """A chat body around a schema given as JSON text (too deep for json.dumps to encode)."""
    return ('{"model":"quick_pick","max_tokens":48,"messages":[{"role":"user","content":"play jazz"}],'
            '"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":' + schema_text + "}}}").encode()


def format_cases() -> list[Case]:
    cases = []
    for fmt in ({"type": "json_object"}, {"type": "text"}, {"type": "json_schema"},
                {"type": "json_schema", "json_schema": {"name": "x"}}, {"type": "json_schema", "json_schema": None},
                {"type": "json_schema", "json_schema": {"schema": "string"}},
                {"type": "json_schema", "json_schema": {"schema": [1]}},
                {"type": "json_schema", "json_schema": {"schema": True}},
                {"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}},
                {"type": "yaml"}, {"type": None}, "json", [], {}):
        cases.append(Case(f"response_format {json.dumps(fmt)[:40]}", chat(fmt=fmt), words=("response_format",)))
    return cases


def number_cases() -> list[Case]:
    raw_numbers = {"max_tokens": ["9" * 5001, "-" + "9" * 5001, "1e400", "NaN", "Infinity", "-Infinity",
                                  "1" + "0" * 4000],
                   "temperature": ["1e-320", "NaN", "Infinity", "-0.0", "1e400", "4.9e-324", "2.0000000001"],
                   "top_p": ["5e-324", "NaN", "0", "1e-7", "1.0000001", "-Infinity", "1e-320"],
                   "seed": ["9" * 5001, "18446744073709551616", "-9223372036854775809", "1.5", "NaN"],
                   "n": ["9" * 5001, "0", "2", "1e30"]}
    cases = []
    for path in (CHAT, PREDICT):
        for field, values in raw_numbers.items():
            if path == PREDICT and field == "n":
                continue
            for v in values:
                base = chat() if path == CHAT else {"input": "play jazz", "max_tokens": 16}
                text = json.dumps({**base, field: "@@"}).replace('"@@"', v)
                cases.append(Case(f"{path.split('/')[-1]} {field}={v[:12]}", text.encode(), path=path,
                                  words=(field, "JSON", "json")))
        for field, values in {"max_tokens": [0, -1, 2**31, 2**63, 10**30, 1.5, "10", True, None, 10**6],
                              "temperature": [-1, 2.5, 1e308, "0.5", True, 1e-300],
                              "top_p": [0, 1.5, 1e-300, "1"]}.items():
            for v in values:
                base = chat() if path == CHAT else {"input": "play jazz", "max_tokens": 16}
                cases.append(Case(f"{path.split('/')[-1]} {field}={str(v)[:12]}", {**base, field: v}, path=path,
                                  words=(field,)))
    return cases


def unicode_cases() -> list[Case]:
    cases = []
    surrogates = ["\\ud800", "\\udfff", "a\\udc00b", "\\ud83d", "\\udbff\\udbff"]
    for s in surrogates:
        for where in ("content", "model", "schema key", "schema enum", "name", "predict input", "system"):
            if where == "content":
                text = '{"model":"quick_pick","max_tokens":8,"messages":[{"role":"user","content":"%s"}]}' % s
            elif where == "model":
                text = '{"model":"%s","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}' % s
            elif where == "schema key":
                text = ('{"model":"quick_pick","max_tokens":8,"messages":[{"role":"user","content":"hi"}],'
                        '"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":'
                        '"object","properties":{"%s":{"type":"integer"}}}}}}' % s)
            elif where == "schema enum":
                text = ('{"model":"quick_pick","max_tokens":8,"messages":[{"role":"user","content":"hi"}],'
                        '"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"enum":'
                        '["%s"]}}}}' % s)
            elif where == "name":
                text = ('{"model":"quick_pick","max_tokens":8,"messages":[{"role":"user","content":"hi"}],'
                        '"response_format":{"type":"json_schema","json_schema":{"name":"%s","schema":{"type":'
                        '"integer"}}}}' % s)
            elif where == "system":
                text = ('{"model":"quick_pick","max_tokens":8,"messages":[{"role":"system","content":"%s"},'
                        '{"role":"user","content":"hi"}]}' % s)
            else:
                cases.append(Case(f"surrogate {s} in predict input", ('{"input":"%s"}' % s).encode(), path=PREDICT,
                                  words=("Unicode", "input")))
                continue
            cases.append(Case(f"surrogate {s} in {where}", text.encode(), words=("Unicode", "surrogate")))
    for raw in (b"\xed\xa0\x80", b"\xff\xfe", b"\xc0\xaf", b"\x80", b"\xf4\x90\x80\x80"):  # invalid UTF-8 bytes
        body = b'{"model":"quick_pick","messages":[{"role":"user","content":"' + raw + b'"}]}'
        cases.append(Case(f"invalid UTF-8 {raw!r}", body, words=("UTF-8", "Unicode")))
        cases.append(Case(f"invalid UTF-8 {raw!r} predict", b'{"input":"' + raw + b'"}', path=PREDICT,
                          words=("UTF-8", "Unicode")))
    for text in ("\u0000", "\u202e\u202d", "\U0001F600" * 200, "\ufeff", "\u0301" * 500, "a\r\nb\x1b[31m"):
        cases.append(Case(f"odd but valid text {text[:3]!r}", chat(messages=[{"role": "user", "content": text}])))
    return cases


def body_cases() -> list[Case]:
    b = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
    raws = ["", " ", "{", "}", "[]", "null", "1", '"x"', "{'model': 1}", '{"model":"quick_pick",}', "\x00" * 10,
            '{"model":"quick_pick","messages":[{"role":"user","content":"hi"}]} trailing',
            '{"model":"quick_pick","messages":[{"role":"user","content":"hi"}],"model":"nope"}',
            "\ufeff" + json.dumps(chat()), "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000,
            '{"model":"quick_pick","messages":' + "[" * 5000 + "]" * 5000 + "}"]
    cases = [Case(f"raw body {r[:20]!r}", b(r), words=("JSON", "body", "nested", "messages", "model")) for r in raws]
    for body in ({}, {"model": "quick_pick"}, {"messages": []}, {"model": "quick_pick", "messages": []},
                 {"model": "quick_pick", "messages": [{"role": "tool", "content": "x"}]},
                 {"model": "quick_pick", "messages": [{"role": "user"}]},
                 {"model": "quick_pick", "messages": [{"role": "user", "content": ""}]},
                 {"model": "quick_pick", "messages": [{"role": "assistant", "content": "x"}]},
                 {"model": "quick_pick", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                 {"model": "quick_pick", "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
                 {"model": "quick_pick", "messages": "hi"}, {"model": "nope", "messages": [{"role": "user",
                                                                                          "content": "x"}]},
                 {"model": "", "messages": [{"role": "user", "content": "x"}]},
                 {"model": ["quick_pick"], "messages": [{"role": "user", "content": "x"}]},
                 chat(stream=True), chat(n=3), chat(tools=[{"type": "function"}]), chat(logprobs=True),
                 chat(stop=["}"]), chat(stop=[1]), chat(stream_options={"include_usage": "yes"}),
                 chat(messages=[{"role": "user", "content": "x"}] * 5000)):
        cases.append(Case(f"body {json.dumps(body)[:50]}", body,
                          words=("model", "messages", "stream", "n", "tools", "logprobs", "stop", "content", "role")))
    for body in ({}, {"input": ""}, {"input": 1}, {"input": ["a"]}, {"input": None}, {"text": "x"}):
        cases.append(Case(f"predict body {json.dumps(body)}", body, path=PREDICT, words=("input",)))
    # huge bodies: just under the 1 MB default limit (a prompt past the context), and past it (413)
    cases.append(Case("content 990 KB", chat(messages=[{"role": "user", "content": "a " * 495_000}]),
                      words=("context", "tokens", "prompt", "content")))
    cases.append(Case("content 1.5 MB", chat(messages=[{"role": "user", "content": "a" * 1_500_000}]),
                      words=("body", "bytes", "large")))
    cases.append(Case("predict 5 MB", {"input": "a" * 5_000_000}, path=PREDICT, words=("body", "bytes", "large")))
    cases.append(Case("schema 900 KB enum", chat({"enum": ["x" * 900] * 1000}), words=("size", "limit")))
    return cases


def auth_cases() -> list[Case]:
    cases = []
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic " + KEY},
                    {"authorization": "bearer " + KEY.upper()}, {"authorization": "Bearer " + "k" * 10_000},
                    {"authorization": "Bearer \u00e9".encode("latin-1")}):
        cases.append(Case(f"auth {str(headers)[:40]}", chat(), headers=headers, words=("key", "API", "Authorization")))
    return cases


KEYWORD_LEAVES = [
    lambda r: {"type": "integer", "minimum": r.randint(-5, 5), "maximum": r.randint(-5, 50)},
    lambda r: {"type": "number", "exclusiveMinimum": r.choice([0, 0.5]), "maximum": r.choice([1, 1e6])},
    lambda r: {"type": "string", "maxLength": r.randint(0, 12), "minLength": r.randint(0, 3)},
    lambda r: {"type": "string", "pattern": r.choice(["^[a-z]{2,4}$", "^(?=x)y$", "^\\d{3}-\\d{2}$", "[A-Z]+",
                                                     "^(a|bc)*$", "^.{0,5}$", "^[^\"\\\\]{1,3}$"]),
               "maxLength": 8},
    lambda r: {"enum": r.sample(["a", "b", 1, 2.5, None, True, [1], {"k": 1}, "a"], r.randint(1, 4))},
    lambda r: {"const": r.choice(["x", 0, False, None, {"a": [1]}])},
    lambda r: {"type": r.sample(["string", "integer", "null", "boolean", "number"], r.randint(1, 3)), "maxLength": 4},
    lambda r: {"type": "boolean"},
    lambda r: {"type": "null"},
    lambda r: {"type": "string", "format": r.choice(["date", "uuid", "email", "ipv4", "time", "uri"])},
    lambda r: {"not": {"type": "string"}},
    lambda r: {"type": "integer", "enum": ["a", 1]},
    lambda r: {"type": "integer", "multipleOf": r.choice([2, 5, 0.5])},
    lambda r: True,
]


def fuzz_schema(r: random.Random, depth: int = 0):
    """A random schema from every keyword family, valid and not; depth-bounded."""
    if depth >= 3 or r.random() < 0.35:
        return r.choice(KEYWORD_LEAVES)(r)
    kind = r.randrange(7)
    if kind == 0:
        props = {f"k{i}": fuzz_schema(r, depth + 1) for i in range(r.randint(0, 4))}
        s = {"type": "object", "properties": props,
             "required": r.sample(sorted(props) + ["zz"], r.randint(0, len(props)))}
        if r.random() < 0.5:
            s["additionalProperties"] = r.choice([False, True, {"type": "integer"}])
        if r.random() < 0.2:
            s["minProperties"] = r.randint(0, 3)
        return s
    if kind == 1:
        s = {"type": "array", "items": fuzz_schema(r, depth + 1), "maxItems": r.randint(0, 4)}
        if r.random() < 0.4:
            s["minItems"] = r.randint(0, 3)
        return s
    if kind in (2, 3, 4):
        key = ("anyOf", "oneOf", "allOf")[kind - 2]
        s = {key: [fuzz_schema(r, depth + 1) for _ in range(r.randint(1, 3))]}
        if r.random() < 0.4:
            s["type"] = r.choice(["object", "string", "integer"])
        return s
    if kind == 5:
        return {"$defs": {"d": fuzz_schema(r, depth + 1)}, "$ref": "#/$defs/d"}
    return {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"$ref": "#"}},
            "required": r.choice([["v"], ["v", "next"]])}


def fuzz_cases(n: int) -> list[Case]:
    cases = []
    for i in range(n):
        r = random.Random(i)
        schema = fuzz_schema(r)
        if not isinstance(schema, dict):
            schema = {"anyOf": [schema]}
        strict = r.random() > 0.15
        cases.append(Case(f"fuzz {i}", chat(schema, strict=None if strict else False, max_tokens=48),
                          strict=strict))
    return cases


# -- the server --

def build_run(root: Path) -> tuple[Path, Path]:
    """An untrained tiny quick_pick model as a run directory: (tasks dir, run dir)."""
    from tests.serving import build_quick

    quick = build_quick(root / "quick_pick" / "hostile")
    (root / "quick_pick" / "hostile" / "tasks").rename(root / "tasks")
    return root / "tasks", quick.model_dir.parent


def start_server(tasks: Path, run: Path, port: int, log: Path) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = ["prlimit", f"--as={MEMORY_CAP}", "--", sys.executable, "-m", "schemabuild", "serve", "quick_pick",
           "--tasks-dir", str(tasks), "--run", str(run), "--runs-dir", str(run.parent.parent),
           "--port", str(port), "--api-key", KEY, "--device", "cpu", "--request-timeout-s", "60"]
    print("server:", " ".join(cmd[:4]), "... serve quick_pick --api-key ... (defaults otherwise)", flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited during startup; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not start within 300 s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(peak RSS of the server process, current RSS of it plus its children) in MB."""
    def rss(p):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    peak = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                peak = int(line.split()[1]) / 1024
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return peak, rss(pid) + sum(rss(int(k)) for k in kids)


# -- checks --

def judge(case: Case, r) -> tuple[str, str]:
    """(outcome, detail). Outcomes: valid200, cut200, other200, refused_ok, refused_unnamed, INVALID200, 5XX,
    bad_error_body."""
    import jsonschema

    if r.status_code >= 500:
        return "5XX", r.text[:200]
    if r.status_code == 200 and r.headers.get("content-type", "").startswith("text/event-stream"):
        return "other200", "stream"
    try:
        body = r.json()
    except ValueError:
        # uvicorn's own plain-text 400s for broken framing are documented; anything else is a bad body
        return ("refused_ok", "uvicorn plain-text") if r.status_code == 400 else ("bad_error_body", r.text[:100])
    if r.status_code == 200:
        choice = body["choices"][0] if "choices" in body else None
        if choice is None:
            return "other200", "predict"
        if choice["finish_reason"] != "stop":
            return "cut200", choice["finish_reason"]
        if case.schema is not None and case.strict:
            try:
                out = json.loads(choice["message"]["content"])
                jsonschema.validators.validator_for(case.schema)(case.schema).validate(out)
            except (ValueError, jsonschema.ValidationError) as exc:
                return "INVALID200", f"{str(exc).splitlines()[0][:150]} | {choice['message']['content'][:100]}"
            return "valid200", ""
        return "other200", ""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict) or set(err) != {"message", "type", "param", "code"} or "\n" in err["message"]:
        return "bad_error_body", str(body)[:200]
    if r.status_code == 422 and err["code"] == "schema_violation":
        return "INVALID200", "422 schema_violation (caught by the server's output check): " + err["message"][:150]
    msg = err["message"]
    words = case.words
    if err["code"] == "invalid_schema" and not words and isinstance(case.schema, dict):
        words = tuple(_keys(case.schema)) + ("limit",)
    if words and not any(w.lower() in msg.lower() for w in words):
        return "refused_unnamed", f"{r.status_code} {msg[:160]}"
    return "refused_ok", f"{r.status_code} {err['code']}"  # detail: counted by status and code


def _keys(schema, depth=0):
    if depth > 50:
        return
    if isinstance(schema, dict):
        for k, v in schema.items():
            yield k
            yield from _keys(v, depth + 1)
    elif isinstance(schema, list):
        for v in schema:
            yield from _keys(v, depth + 1)


def send(client, case: Case):
    headers = {"authorization": f"Bearer {KEY}"} if case.headers is None else case.headers
    if isinstance(case.body, bytes):
        return client.post(case.path, content=case.body, headers={**headers, "content-type": "application/json"})
    return client.post(case.path, json=case.body, headers=headers)


def latency(url: str, samples: int) -> tuple[list[float], list[float], list[bool]]:
    """A normal request's latency idle vs. while a slow-to-compile (accepted) schema compiles, interleaved."""
    import httpx

    normal = chat(max_tokens=16)
    h = {"authorization": f"Bearer {KEY}"}
    idle, busy, overlapped = [], [], []
    with httpx.Client(base_url=url, timeout=120) as c:
        c.post(CHAT, json=normal, headers=h)  # warm
        for i in range(samples):
            t0 = time.perf_counter()
            assert c.post(CHAT, json=normal, headers=h).status_code == 200
            idle.append(time.perf_counter() - t0)
            # distinct per sample (the pool caches by schema hash); ~4.5 s to compile alone on this tokenizer
            slow = {"type": "object", "properties": {f"s{i}_{k}": {"type": "string", "pattern": "[a-z]{1,999}"}
                                                     for k in range(8)}}
            done = threading.Event()
            out = {}

            def hostile():
                with httpx.Client(base_url=url, timeout=120) as c2:
                    out["r"] = c2.post(CHAT, json=chat(slow, max_tokens=8), headers=h)
                done.set()

            th = threading.Thread(target=hostile)
            th.start()
            time.sleep(0.5)  # the slow schema's compile has started in the pool's child
            t0 = time.perf_counter()
            assert c.post(CHAT, json=normal, headers=h).status_code == 200
            busy.append(time.perf_counter() - t0)
            overlapped.append(not done.is_set())  # the compile was still running when the normal answer came
            th.join(120)
    return idle, busy, overlapped


def main() -> None:
    import httpx

    ap = argparse.ArgumentParser()
    ap.add_argument("--fuzz", type=int, default=320, help="seeded random schemas added to the fixed cases")
    ap.add_argument("--latency-samples", type=int, default=8)
    ap.add_argument("--budget-s", type=float, default=480, help="stop sending the battery after this long")
    args = ap.parse_args()

    cases = (schema_cases() + format_cases() + number_cases() + unicode_cases() + body_cases() + auth_cases()
             + fuzz_cases(args.fuzz))
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    tasks, run = build_run(work)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(tasks, run, port, work / "server.log")
    outcomes, statuses, codes, problems = Counter(), Counter(), Counter(), []
    t_start = time.monotonic()
    sent = 0
    try:
        with httpx.Client(base_url=url, timeout=180) as client:
            for case in cases:
                if time.monotonic() - t_start > args.budget_s:
                    print(f"budget of {args.budget_s:g} s spent; stopped after {sent} requests", flush=True)
                    break
                t0 = time.perf_counter()
                try:
                    r = send(client, case)
                except (ValueError, RecursionError) as exc:  # the client could not encode it: not sent
                    print(f"  skipped {case.name}: {type(exc).__name__}", flush=True)
                    continue
                except httpx.HTTPError as exc:
                    outcome, detail, status = "TRANSPORT", f"{type(exc).__name__}: {exc}"[:200], "none"
                else:
                    outcome, detail = judge(case, r)
                    status = r.status_code
                sent += 1
                statuses[status] += 1
                outcomes[outcome] += 1
                if outcome == "refused_ok":
                    codes[detail] += 1
                took = time.perf_counter() - t0
                if outcome in ("5XX", "INVALID200", "refused_unnamed", "bad_error_body", "TRANSPORT"):
                    problems.append((case.name, status, detail))
                    print(f"  ! {case.name}: {status} {outcome} {detail}", flush=True)
                if took > 5:
                    print(f"  slow {took:.1f}s {case.name}: {status}", flush=True)
                if proc.poll() is not None:
                    problems.append((case.name, "crash", f"the server exited with {proc.returncode}"))
                    print(f"  ! CRASH after {case.name}", flush=True)
                    break
        battery_s = time.monotonic() - t_start
        peak_mb, tree_mb = tree_memory_mb(proc.pid)
        alive = proc.poll() is None
        normal_ok = alive and httpx.post(url + CHAT, json=chat(max_tokens=16), timeout=60,
                                         headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        metrics = httpx.get(url + "/metrics", headers={"authorization": f"Bearer {KEY}"}, timeout=30).text \
            if alive else ""
        idle, busy, overlapped = latency(url, args.latency_samples) if alive else ([], [], [])
        still_alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()

    ms = lambda xs, f: f"{f(xs) * 1000:.0f} ms" if xs else "-"  # noqa: E731
    print(f"\nbattery: {sent} requests of {len(cases)} in {battery_s:.0f} s (server under prlimit --as={MEMORY_CAP})")
    print(f"  status codes      {dict(sorted(statuses.items(), key=str))}")
    print(f"  outcomes          {dict(outcomes)}")
    print(f"  5xx               {statuses_5xx(statuses)}   (goal 0)")
    print(f"  crashes           {0 if alive else 1}; alive at the end and answers a normal request: {normal_ok}")
    print(f"  strict 200s       {outcomes['valid200']} valid, {outcomes['INVALID200']} invalid, "
          f"{outcomes['cut200']} cut off at max_tokens")
    print(f"  refusals          {outcomes['refused_ok']} naming the keyword/limit/field, "
          f"{outcomes['refused_unnamed']} not naming it, {outcomes['bad_error_body']} with a malformed error body")
    print(f"  refusals by code  {dict(codes.most_common())}")
    print(f"  server peak RSS   {peak_mb:.0f} MB (process), {tree_mb:.0f} MB now with compile children")
    for line in metrics.splitlines():
        if line.startswith(("schemabuild_schema_violations", "schemabuild_grammar")):
            print("  metric", line)
    if idle:
        print(f"latency of a normal request, {len(idle)} samples each, interleaved: idle p50 "
              f"{ms(idle, statistics.median)} max {ms(idle, max)}; while a slow schema compiles p50 "
              f"{ms(busy, statistics.median)} max {ms(busy, max)}; delta p50 "
              f"{(statistics.median(busy) - statistics.median(idle)) * 1000:+.0f} ms, max "
              f"{(max(busy) - max(idle)) * 1000:+.0f} ms (goal ≤ +100 ms); compile still running at the answer in "
              f"{sum(overlapped)}/{len(overlapped)}; server alive after: {still_alive}")
    for name, status, detail in problems[:30]:
        print(f"  PROBLEM {name}: {status} {detail}")


def statuses_5xx(statuses: Counter) -> int:
    return sum(n for s, n in statuses.items() if isinstance(s, int) and s >= 500)


if __name__ == "__main__":
    main()
