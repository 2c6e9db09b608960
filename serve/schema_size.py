"""The smallest instance of a schema: refuse recursion with no finite instance and instances past the size limit.

Shared with `serve.schemas` (which walks and normalizes a client's schema): the refusal type and the limits.
"""

from __future__ import annotations

import json
from typing import Any

INF = float("inf")


class SchemaRefused(ValueError):
    """The schema cannot be honoured; `keyword` and `path` say where (the server answers 400 invalid_schema)."""

    def __init__(self, keyword: str, path: str, message: str):
        super().__init__(f"{path}: {keyword}: {message}")
        self.keyword, self.path = keyword, path


class Limits:
    """Sizes past which a schema is refused before any compile."""

    max_schema_bytes = 256_000
    max_nodes = 20_000
    max_enum = 2_000
    max_repeat = 1_000
    max_instance_bytes = 16_384


def schema_types(node: dict) -> set[str] | None:
    t = node.get("type")
    if t is None:
        return None
    return {t} if isinstance(t, str) else set(t)


def check_finite(schema: dict, limits: Limits) -> None:
    """Refuse schemas where a subschema's smallest instance is infinite (recursion) or over the size limit.

    Smallest sizes by fixed point over the $ref targets, so that jump-forward (which forces the text every
    completion shares) and the grammar stay bounded.
    """
    targets: dict[str, Any] = {}
    sizes: dict[str, float] = {}

    def size(node: Any, path: str) -> float:
        if node is True:
            return 1
        if node is False or not isinstance(node, dict):
            return INF
        if "$ref" in node:
            ref = node["$ref"]
            if ref not in targets:
                targets[ref] = _resolve(schema, ref)
                sizes.setdefault(ref, INF)
            return sizes[ref]
        if "const" in node:
            return len(json.dumps(node["const"], separators=(",", ":")))
        if "enum" in node:
            return min((len(json.dumps(v, separators=(",", ":"))) for v in node["enum"]), default=INF)
        branches = node.get("anyOf") or node.get("oneOf")
        if branches:
            return min(size(b, path) for b in branches)
        return min(_typed_size(node, t, size, path) for t in schema_types(node) or _inferred_types(node))

    root = size(schema, "$")
    for _ in range(2 * len(json.dumps(schema)) + 2):  # each round lowers a size or finds a target; bounded
        known, changed = len(targets), False
        for ref, target in list(targets.items()):
            new = size(target, ref)
            if new < sizes[ref]:
                sizes[ref], changed = new, True
        if not changed and len(targets) == known:
            break
    root = size(schema, "$")
    if root == INF:
        where = next((r for r, s in sizes.items() if s == INF), None)
        if where is None:  # no recursion: an empty enum or a false subschema where a value is required
            keyword = "enum" if '"enum": []' in json.dumps(schema) else "false"
            raise SchemaRefused(keyword, "$", "no value satisfies the schema (an empty enum or a false subschema "
                                "where a value is required)")
        raise SchemaRefused("$ref", where, "the schema has no finite instance (it requires itself without end)")
    biggest = max([root, *sizes.values()])
    if biggest == INF:
        where = next(r for r, s in sizes.items() if s == INF)
        raise SchemaRefused("$ref", where, "this subschema has no finite instance (it requires itself without end)")
    if biggest > limits.max_instance_bytes:
        raise SchemaRefused("size", "$", f"the smallest instance is {int(biggest)} bytes; the limit is "
                            f"{limits.max_instance_bytes}")


def _inferred_types(node: dict) -> set[str]:
    """The types a schema without `type` is compiled as (by its keywords); any value when none says."""
    if {"properties", "required", "additionalProperties", "patternProperties"} & set(node):
        return {"object"}
    if {"items", "prefixItems", "minItems"} & set(node):
        return {"array"}
    if {"pattern", "minLength", "maxLength"} & set(node):
        return {"string"}
    return {"null"}


def _typed_size(node: dict, t: str, size, path: str) -> float:
    if t == "object":
        props = node.get("properties") or {}
        total = 2
        for name in node.get("required") or []:
            total += len(json.dumps(name)) + 2 + size(props.get(name, True), path)
        return total
    if t == "array":
        prefix = node.get("prefixItems") or (node["items"] if isinstance(node.get("items"), list) else [])
        n = int(node.get("minItems", 0) or 0)
        item = node.get("items") if isinstance(node.get("items"), dict) else True
        total = 2.0
        for i in range(n):
            total += 1 + size(prefix[i] if i < len(prefix) else item, path)
            if total == INF or total > 1e9:
                return total
        return total
    if t == "string":
        return 2 + int(node.get("minLength", 0) or 0)
    if t in ("integer", "number"):
        return 1 + max(0, len(str(node.get("minimum", "")).split(".")[0]) - 1)
    if t == "boolean":
        return 4
    return 4


def _resolve(root: dict, ref: str) -> Any:
    target: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict):
            target = target.get(part, False)
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return False
    return target


IN_PLACE = ("anyOf", "oneOf", "allOf", "not", "if", "then", "else", "dependentSchemas")
"""Keywords whose subschemas apply to the same instance (no object or array step in between)."""


def check_left_recursion(schema: Any) -> None:
    """Refuse a `$ref` that leads back to itself through in-place keywords only (`anyOf`, `allOf`, another
    `$ref`, ...): no instance is ever checked against something smaller, so a validator recurses forever."""
    refs: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#"):
                refs.append(node["$ref"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    def in_place_refs(node: Any, out: list[str]) -> list[str]:
        if isinstance(node, list):
            for item in node:
                in_place_refs(item, out)
        elif isinstance(node, dict):
            if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#"):
                out.append(node["$ref"])
            for key in IN_PLACE:
                sub = node.get(key)
                in_place_refs(list(sub.values()) if key == "dependentSchemas" and isinstance(sub, dict) else sub, out)
        return out

    collect(schema)
    state: dict[str, int] = {}  # 1: on the current path, 2: no cycle through it

    def visit(ref: str, path: str) -> None:
        if state.get(ref) == 2:
            return
        if state.get(ref) == 1:
            raise SchemaRefused("$ref", path, f"{ref!r} leads back to itself through anyOf/allOf/oneOf/$ref alone, "
                                              "with no object or array in between: no validator can check it")
        state[ref] = 1
        for nxt in in_place_refs(_resolve(schema, ref), []):
            visit(nxt, ref)
        state[ref] = 2

    for ref in dict.fromkeys(refs):
        visit(ref, ref)
