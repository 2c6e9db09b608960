"""A client's `response_format` JSON schema, made safe to compile: `prepare_schema`, `output_violation`.

The schema is compiled as written (optional stays optional), after a walk that
- normalizes harmless quirks: duplicate enum values, enum/const values of another type than `type` says
  (dropped while some remain), `required` names missing from `properties` (added from
  `additionalProperties`), `allOf` and keywords beside `anyOf`/`oneOf` (merged, since xgrammar drops them);
- refuses, naming the keyword and its JSON path, what xgrammar would silently ignore or cannot honour
  (`not`, `if`, `uniqueItems`, lookaround in patterns, overlapping `oneOf`, ...), what no instance can
  satisfy (conflicting `allOf`, empty bounds, recursion with no finite instance) and what is too large.
With `strict: false` the ignorable keywords are dropped instead and reported back as relaxed.
After decoding, `output_violation` checks the text against the client's original schema.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from schemabuild.serve.schema_size import INF, Limits, SchemaRefused, check_finite, schema_types, check_left_recursion

__all__ = ["Limits", "SchemaRefused", "output_violation", "prepare_schema"]

ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "$schema", "$id", "$anchor", "deprecated",
               "readOnly", "writeOnly", "contentMediaType", "contentEncoding", "contentSchema", "format",
               "$vocabulary", "discriminator", "nullable", "x-order"}
# Validation keywords xgrammar 0.2 compiles without honouring and llguidance refuses (measured in
# bench/schema_sample.py). `dependencies` and its 2019 forms are rewritten instead (see `_Walk.dependencies`).
IGNORED = ("not", "if", "then", "else", "uniqueItems", "contains", "minContains", "maxContains", "unevaluatedItems",
           "$dynamicRef", "$recursiveRef")
DEPENDENCIES = ("dependencies", "dependentRequired", "dependentSchemas")
MAX_DEPENDENCY_BRANCHES = 16
# `format` values both engines know; any other is only an annotation (JSON Schema's default), dropped before compiling.
FORMATS = {"date", "date-time", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uri", "uri-reference",
           "uuid", "unknown"} - {"unknown"}


def is_annotation(key: str) -> bool:
    """A keyword that describes and never constrains: it never blocks a merge (`x-*` extensions included)."""
    return key in ANNOTATIONS or key.startswith("x-")
DEFS = ("$defs", "definitions")
LOOKAROUND = re.compile(r"\(\?(?:=|!|<=|<!)|\\[1-9]|\\k<")
REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
PY_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "null": (type(None),),
            "object": (dict,), "array": (list,)}


def prepare_schema(schema: Any, strict: bool = True, limits: Limits = Limits(),
                   engine: str = "xgrammar") -> tuple[dict, list[str]]:
    """The schema to compile for a client's `schema` on grammar `engine`, and the keywords relaxed (only when not
    strict)."""
    import jsonschema

    if not isinstance(schema, dict):
        raise SchemaRefused("type", "$", f"a schema must be a JSON object here, got {type(schema).__name__}")
    try:
        size = len(json.dumps(schema, allow_nan=False))
    except ValueError:
        raise SchemaRefused("number", "$", "a number is not finite (or has too many digits)") from None
    if size > limits.max_schema_bytes:
        raise SchemaRefused("size", "$", f"the schema is {size} bytes; the limit is {limits.max_schema_bytes}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(_deduped(schema))
    except jsonschema.SchemaError as exc:
        raise SchemaRefused(str(exc.validator), _path(exc.absolute_path), f"not a valid JSON schema: {exc.message}") \
            from None
    walk = _Walk(schema, strict, limits, engine)
    out = walk.node(copy.deepcopy(schema), "$")
    check_finite(out, limits)
    check_left_recursion(schema)  # the client's schema: the output is checked against it as written
    return out, sorted(set(walk.relaxed))


def _nested_repeat(pattern: str) -> int:
    """The largest product of finite repetition bounds along one nesting path of `pattern` (1 when none)."""
    try:
        import re._parser as sre_parse
    except ImportError:  # Python < 3.11
        import sre_parse

    try:
        tree = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError, ValueError):
        return 1  # re.compile below says what is wrong with it

    def walk(items, depth=0) -> int:
        if depth > 200:
            return INF
        worst = 1
        for op, arg in items:
            if op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, getattr(sre_parse, "POSSESSIVE_REPEAT", None)):
                low, high, sub = arg
                bound = high if high != sre_parse.MAXREPEAT else max(low, 1)
                worst = max(worst, max(bound, 1) * walk(sub, depth + 1))
            elif op == sre_parse.SUBPATTERN:
                worst = max(worst, walk(arg[-1], depth + 1))
            elif op == sre_parse.BRANCH:
                worst = max([worst] + [walk(b, depth + 1) for b in arg[1]])
            elif op in (sre_parse.ATOMIC_GROUP if hasattr(sre_parse, "ATOMIC_GROUP") else (),):
                worst = max(worst, walk(arg, depth + 1))
        return worst

    return walk(tree)


def output_violation(schema: dict, text: str) -> str | None:
    """Why `text` does not satisfy `schema` (the client's original), or None when it does."""
    import jsonschema

    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"the output is not JSON ({exc})"
    cls = jsonschema.validators.validator_for(schema)
    try:
        error = jsonschema.exceptions.best_match(cls(schema).iter_errors(value))
    except RecursionError:
        return "the output is nested too deeply to check against the schema"

    if error is None:
        return None
    return f"{_path(error.absolute_path)}: {error.message[:200]}"


# ---- the walk --------------------------------------------------------------------------------------

def _path(parts) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _deduped(node: Any) -> Any:
    """`node` with duplicate enum values removed (a draft quirk both engines accept)."""
    if isinstance(node, list):
        return [_deduped(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _deduped(v) for k, v in node.items()}
    if isinstance(out.get("enum"), list):
        seen, uniq = set(), []
        for v in out["enum"]:
            key = json.dumps(v, sort_keys=True)
            if key not in seen:
                seen.add(key)
                uniq.append(v)
        out["enum"] = uniq
    return out


def _has_type(value: Any, types: set[str]) -> bool:
    if isinstance(value, bool):
        return "boolean" in types
    if isinstance(value, float) and value.is_integer() and "integer" in types:
        return True
    return any(isinstance(value, PY_TYPES[t]) for t in types if t in PY_TYPES)


class _Walk:
    def __init__(self, root: dict, strict: bool, limits: Limits, engine: str = "xgrammar"):
        self.root, self.strict, self.limits, self.engine = root, strict, limits, engine
        self.relaxed: list[str] = []
        self.nodes = 0

    def refuse_or_relax(self, node: dict, key: str, path: str, why: str) -> None:
        if self.strict:
            raise SchemaRefused(key, f"{path}", f"{why}; send strict: false to drop it")
        node.pop(key, None)
        self.relaxed.append(key)

    def node(self, node: Any, path: str) -> Any:
        if isinstance(node, bool):
            return node
        if not isinstance(node, dict):
            raise SchemaRefused("type", path, "a subschema must be an object or a boolean")
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise SchemaRefused("size", path, f"more than {self.limits.max_nodes} subschemas")
        for _ in range(64):  # a member's own allOf comes back into `node` by the merge: flatten it too
            if "allOf" not in node:
                break
            parts = node.pop("allOf")
            for i, part in enumerate(parts):
                node = self.merge(node, self.deref(part, f"{path}.allOf[{i}]"), f"{path}.allOf[{i}]")
        else:
            raise SchemaRefused("allOf", path, "allOf nests (or refers to itself) more than 64 deep")
        if any(key in node for key in DEPENDENCIES):
            node = self.dependencies(node, path)
        for key in ("anyOf", "oneOf"):
            if key in node:
                node = self.push_into_branches(node, key, path)
        for key in IGNORED:
            if key in node:
                self.refuse_or_relax(node, key, f"{path}.{key}", "this engine cannot enforce it")
        ref = node.get("$ref")
        if ref is not None and (not isinstance(ref, str) or not ref.startswith("#")):
            raise SchemaRefused("$ref", path, f"only local references (#/...) are supported, got {ref!r}")
        if ref is not None:
            self.deref(node, path)  # resolvable?
            if len([k for k in node if not is_annotation(k) and k not in DEFS]) > 1:
                node = self.merge({k: v for k, v in node.items() if k != "$ref"}, self.deref(node, path), path)
        self.values(node, path)
        self.bounds(node, path)
        self.objects(node, path)
        for key in ("properties", "patternProperties", *DEFS):
            for name, sub in list((node.get(key) or {}).items()):
                node[key][name] = self.node(sub, f"{path}.{key}.{name}")
        for key in ("additionalProperties", "items", "propertyNames", "unevaluatedProperties"):
            if isinstance(node.get(key), dict):
                node[key] = self.node(node[key], f"{path}.{key}")
        for key in ("prefixItems", "anyOf", "oneOf"):
            if isinstance(node.get(key), list):
                node[key] = [self.node(sub, f"{path}.{key}[{i}]") for i, sub in enumerate(node[key])]
        if isinstance(node.get("items"), list):  # draft-7 tuple form
            node["items"] = [self.node(sub, f"{path}.items[{i}]") for i, sub in enumerate(node["items"])]
        if "oneOf" in node and _disjoint(node["oneOf"], self) and "anyOf" not in node:
            node["anyOf"] = node.pop("oneOf")  # no instance matches two branches: exactly anyOf, which every engine has
        elif "oneOf" in node and not _disjoint(node["oneOf"], self):
            branches = node["oneOf"]
            self.refuse_or_relax(node, "oneOf", f"{path}.oneOf", "its branches overlap, and this engine cannot "
                                 "keep outputs to exactly one; use anyOf")
            if "anyOf" not in node:  # relaxed (not strict): any branch, rather than none (an empty anyOf)
                node["anyOf"] = branches
        if isinstance(node.get("format"), str) and node["format"] not in FORMATS:
            node.pop("format")  # an annotation to JSON Schema; an engine that does not know it would refuse it
        return node

    def dependencies(self, node: dict, path: str) -> dict:
        """`dependencies` / `dependentRequired` / `dependentSchemas` as an anyOf: for each trigger property, a branch
        where it is absent and one where it is present with what it needs (both engines enforce anyOf)."""
        deps: dict[str, Any] = {}
        for key in DEPENDENCIES:
            for name, need in (node.pop(key, None) or {}).items():
                deps[name] = need
        if "anyOf" in node or "oneOf" in node:
            self.refuse_or_relax(node, "dependencies", f"{path}.dependencies",
                                 "beside anyOf/oneOf this engine cannot enforce it")
            return node
        required = set(node.get("required") or [])
        branches: list[tuple[list, set, set]] = [([], set(), set())]  # (schemas to add, absent names, required)
        for name, need in deps.items():
            grown = []
            for extra, absent, present in branches:
                if name not in required and name not in present:
                    grown.append((extra, absent | {name}, present))
                if name not in absent:
                    needs = set(need) if isinstance(need, list) else set()
                    grown.append((extra + ([need] if isinstance(need, dict) else []), absent, present | {name} | needs))
            branches = [b for b in grown if not (b[1] & b[2])]
            if len(branches) > MAX_DEPENDENCY_BRANCHES:
                raise SchemaRefused("dependencies", f"{path}.dependencies",
                                    f"more than {MAX_DEPENDENCY_BRANCHES} combinations of dependent properties")
        if not branches:
            raise SchemaRefused("dependencies", f"{path}.dependencies", "no object satisfies them with `required`")
        keep = {k: v for k, v in node.items() if is_annotation(k) or k in DEFS}
        base = {k: v for k, v in node.items() if k not in keep}
        out = []
        for extra, absent, present in branches:
            branch = copy.deepcopy(base)
            props = dict(branch.get("properties") or {})
            if absent and self.engine == "xgrammar":  # its strict mode closes objects, and it refuses `false`
                branch["properties"] = {k: v for k, v in props.items() if k not in absent}
            elif absent:
                branch["properties"] = {**props, **{k: False for k in sorted(absent)}}
            if present:
                branch["required"] = list(dict.fromkeys(list(branch.get("required") or []) + sorted(present)))
            if extra:
                branch["allOf"] = list(branch.get("allOf") or []) + extra
            out.append(branch)
        return {**keep, "anyOf": out} if len(out) > 1 else {**keep, **out[0]}

    def deref(self, node: Any, path: str) -> Any:
        """`node`, or the subschema its local $ref points to (one hop at a time, at most 32)."""
        for _ in range(32):
            if not isinstance(node, dict) or "$ref" not in node:
                return node
            ref = node["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#"):
                raise SchemaRefused("$ref", path, f"only local references (#/...) are supported, got {ref!r}")
            target: Any = self.root
            for part in [p for p in ref[1:].split("/") if p]:
                part = part.replace("~1", "/").replace("~0", "~")
                if isinstance(target, dict) and part in target:
                    target = target[part]
                elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                    target = target[int(part)]
                else:
                    raise SchemaRefused("$ref", path, f"{ref!r} points nowhere in this schema")
            node = target
        raise SchemaRefused("$ref", path, "references chain more than 32 deep")

    def push_into_branches(self, node: dict, key: str, path: str) -> dict:
        """Keywords beside anyOf/oneOf (which xgrammar drops) merged into each branch."""
        beside = {k: v for k, v in node.items() if not is_annotation(k) and k not in DEFS and k != key}
        if not beside:
            return node
        keep = {k: v for k, v in node.items() if is_annotation(k) or k in DEFS}
        branches = []
        for i, branch in enumerate(node[key]):
            try:
                branches.append(self.merge(copy.deepcopy(beside), self.deref(branch, f"{path}.{key}[{i}]"),
                                           f"{path}.{key}[{i}]"))
            except SchemaRefused as exc:
                if exc.keyword != "allOf":
                    raise  # a branch that conflicts with its siblings admits nothing: leave it out
        if not branches:
            raise SchemaRefused(key, f"{path}.{key}", "no branch is compatible with the keywords beside it")
        return {**keep, key: branches}

    def merge(self, a: dict, b: Any, path: str) -> dict:
        """One schema meaning `a` and `b` both hold (allOf); SchemaRefused('allOf') when they conflict."""
        if b is True or b == {}:
            return a
        if b is False or not isinstance(b, dict):
            raise SchemaRefused("allOf", path, "a member admits nothing")
        out = dict(a)
        for key, value in b.items():
            if key in DEFS or is_annotation(key):
                out.setdefault(key, value)
            elif key not in out:
                out[key] = copy.deepcopy(value)
            elif out[key] == value:
                continue
            elif key == "type":
                ta, tb = schema_types(out) or set(), schema_types(b) or set()
                both = (ta & tb) | ({"integer"} if ("integer" in ta and "number" in tb)
                                    or ("number" in ta and "integer" in tb) else set())
                if not both:
                    raise SchemaRefused("allOf", path, f"type {sorted(ta)} conflicts with {sorted(tb)}")
                out["type"] = sorted(both) if len(both) > 1 else both.pop()
            elif key == "allOf":
                out["allOf"] = list(out[key]) + list(value)
            elif key == "required":
                out["required"] = list(dict.fromkeys(list(out[key]) + list(value)))
            elif key == "properties":
                props = dict(out[key])
                for name, sub in value.items():
                    if name in props and (sub is False or props[name] is False):
                        props[name] = False
                    else:
                        props[name] = {"allOf": [props[name], sub]} if name in props else sub
                out["properties"] = props
            elif key == "enum":
                keep = [v for v in out["enum"] if v in value]
                if not keep:
                    raise SchemaRefused("allOf", path, "the enums have no value in common")
                out["enum"] = keep
            elif key in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"):
                out[key] = max(out[key], value)
            elif key in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"):
                out[key] = min(out[key], value)
            else:
                raise SchemaRefused("allOf", path, f"cannot combine two different {key!r}")
        return out

    def values(self, node: dict, path: str) -> None:
        types = schema_types(node)
        if "enum" in node:
            if len(node["enum"]) > self.limits.max_enum:
                raise SchemaRefused("enum", f"{path}.enum", f"{len(node['enum'])} values; the limit is "
                                    f"{self.limits.max_enum}")
            node["enum"] = _deduped({"enum": node["enum"]})["enum"]
            if types is not None:
                node["enum"] = [v for v in node["enum"] if _has_type(v, types)]
                if not node["enum"]:
                    raise SchemaRefused("enum", f"{path}.enum", f"no value has the type {sorted(types)}")
        if "const" in node and types is not None and not _has_type(node["const"], types):
            raise SchemaRefused("const", f"{path}.const", f"the value does not have the type {sorted(types)}")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            if LOOKAROUND.search(pattern):
                self.refuse_or_relax(node, "pattern", f"{path}.pattern",
                                     "lookaround and backreferences are not supported")
            elif any(int(m.group(2) or m.group(1)) > self.limits.max_repeat for m in REPEAT.finditer(pattern)):
                raise SchemaRefused("pattern", f"{path}.pattern",
                                    f"a repetition bound above {self.limits.max_repeat} (size limit)")
            elif _nested_repeat(pattern) > self.limits.max_repeat:
                # (([a-z]{1,999}){1,999}){1,999} compiles in seconds, but each accepted character then costs the
                # decode thread more (41 ms at 35 characters), stalling every client: bound the product.
                raise SchemaRefused("pattern", f"{path}.pattern",
                                    f"nested repetition bounds multiply past {self.limits.max_repeat} (size limit)")
            else:
                try:
                    re.compile(pattern)
                except (re.error, RecursionError, OverflowError) as exc:
                    raise SchemaRefused("pattern", f"{path}.pattern", f"not a valid pattern: {exc}") from None

    def bounds(self, node: dict, path: str) -> None:
        for low, high in (("minLength", "maxLength"), ("minItems", "maxItems"), ("minProperties", "maxProperties"),
                          ("minimum", "maximum")):
            if isinstance(node.get(low), (int, float)) and isinstance(node.get(high), (int, float)) \
                    and node[low] > node[high]:
                raise SchemaRefused(low, f"{path}.{low}", f"{node[low]} is above {high} {node[high]}: nothing fits")
        lo = max((node[k] for k in ("minimum", "exclusiveMinimum") if _num(node.get(k))), default=None)
        hi = min((node[k] for k in ("maximum", "exclusiveMaximum") if _num(node.get(k))), default=None)
        if lo is not None and hi is not None and lo == hi and ("exclusiveMinimum" in node or "exclusiveMaximum" in node):
            raise SchemaRefused("exclusiveMinimum", path, "the exclusive bounds leave no number")
        for key in ("minLength", "minItems", "maxLength", "maxItems"):
            if _num(node.get(key)) and node[key] > self.limits.max_repeat * 10:
                raise SchemaRefused(key, f"{path}.{key}", f"{node[key]} is above the limit {self.limits.max_repeat * 10}")

    def objects(self, node: dict, path: str) -> None:
        required = node.get("required")
        if not isinstance(required, list):
            return
        props = node.setdefault("properties", {}) if required else node.get("properties", {})
        extra = node.get("additionalProperties", True)
        for name in required:
            if name in props:
                continue
            if any(re.search(p, name) for p in (node.get("patternProperties") or {})):
                props[name] = {"allOf": [s for p, s in node["patternProperties"].items() if re.search(p, name)]}
            elif extra is False:
                raise SchemaRefused("required", f"{path}.required", f"{name!r} is required but no property "
                                    "may have that name (additionalProperties is false)")
            else:
                props[name] = extra if isinstance(extra, dict) else {}


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _disjoint(branches: list, walk: _Walk) -> bool:
    """oneOf branches no instance can match twice: distinct types, or a required property with distinct consts."""
    resolved = [walk.deref(b, "$") for b in branches]
    if any(not isinstance(b, dict) for b in resolved):
        return False
    for i, a in enumerate(resolved):
        for b in resolved[i + 1:]:
            if not _apart(a, b):
                return False
    return True


def _apart(a: dict, b: dict) -> bool:
    ta, tb = schema_types(a), schema_types(b)
    if ta is not None and tb is not None:
        num = {"integer", "number"}
        if not (ta & tb) and not (ta & num and tb & num):
            return True
    for key in ("const", "enum"):
        va, vb = _values(a), _values(b)
        if va is not None and vb is not None and not (va & vb):
            return True
    pa, pb = a.get("properties") or {}, b.get("properties") or {}
    for name in set(a.get("required") or []) & set(b.get("required") or []):
        va, vb = _values(pa.get(name)), _values(pb.get(name))
        if va is not None and vb is not None and not (va & vb):
            return True
    return False


def _values(node: Any) -> set[str] | None:
    if not isinstance(node, dict):
        return None
    if "const" in node:
        return {json.dumps(node["const"], sort_keys=True)}
    if "enum" in node:
        return {json.dumps(v, sort_keys=True) for v in node["enum"]}
    return None


# ---- a finite instance exists, and is small --------------------------------------------------------
