"""The strict walk over client schemas (no model): what is refused (keyword + path), normalized, or relaxed."""

from __future__ import annotations

import pytest

from schemabuild.serve.schemas import SchemaRefused, output_violation, prepare_schema

REFUSED = [
    ({"not": {}}, "not", "$.not"),
    ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "allOf", "$.allOf[1]"),
    ({"type": "integer", "enum": ["a", "b"]}, "enum", "$.enum"),
    ({"type": "string", "const": 3}, "const", "$.const"),
    ({"type": "string", "pattern": "^(?=a)b$"}, "pattern", "$.pattern"),
    ({"type": "string", "pattern": "[a-z]{1,6000}"}, "pattern", "$.pattern"),
    ({"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]}, "$ref", "#"),
    ({"$ref": "#"}, "$ref", "$"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, "minLength", "$.minLength"),
    ({"type": "integer", "minimum": 5, "maximum": 2}, "minimum", "$.minimum"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems", "$.uniqueItems"),
    ({"if": {"type": "integer"}, "then": {"minimum": 5}}, "if", "$.if"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf", "$.oneOf"),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["zz"], "additionalProperties": False},
     "required", "$.required"),
    ({"type": "object", "properties": {"a": {"$ref": "http://example.com/x"}}}, "$ref", "$.properties.a"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "$ref", "$.properties.a"),
    ({"enum": list(range(5000))}, "enum", "$.enum"),
    ({"$defs": {"b": {"type": "object", "properties": {"x": {"$ref": "#/$defs/c"}, "y": {"$ref": "#/$defs/c"}},
                      "required": ["x", "y"]},
                "c": {"type": "string", "minLength": 9000}}, "$ref": "#/$defs/b"}, "size", "$"),
    ({"type": "object", "properties": {"a": {"type": "number", "maximum": float("inf")}}}, "number", "$"),
]


@pytest.mark.parametrize("schema, keyword, path", REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_what_the_engine_cannot_honour_is_refused_naming_keyword_and_path(schema, keyword, path):
    with pytest.raises(SchemaRefused) as info:
        prepare_schema(schema)
    assert info.value.keyword == keyword and info.value.path == path, str(info.value)
    assert keyword in str(info.value) and "\n" not in str(info.value)


def test_client_schemas_keep_their_meaning():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "properties": {"type": "string"}}}
    out, relaxed = prepare_schema(schema)
    assert out == schema and relaxed == []  # optional stays optional; no bogus `required`, nothing closed
    # a required name outside `properties` gets its schema from additionalProperties, so the grammar emits it
    out, _ = prepare_schema({"type": "object", "required": ["b"], "additionalProperties": {"type": "boolean"}})
    assert out["properties"] == {"b": {"type": "boolean"}}


def test_harmless_quirks_are_normalized():
    assert prepare_schema({"enum": ["a", "a", "b"]})[0] == {"enum": ["a", "b"]}
    assert prepare_schema({"type": "string", "enum": ["a", 1]})[0]["enum"] == ["a"]
    merged, _ = prepare_schema({"allOf": [
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}]})
    assert merged["required"] == ["a", "b"] and set(merged["properties"]) == {"a", "b"}
    beside, _ = prepare_schema({"type": "object", "properties": {"a": {"type": "integer"}},
                                "anyOf": [{"required": ["a"]}]})
    assert beside == {"anyOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}]}
    # disjoint oneOf: exactly an anyOf (which both engines enforce; llguidance refuses a oneOf it cannot prove)
    assert prepare_schema({"oneOf": [{"type": "integer"}, {"type": "string"}]}) == (
        {"anyOf": [{"type": "integer"}, {"type": "string"}]}, [])


@pytest.mark.parametrize("a, b", [
    ({"title": "A", "description": "one"}, {"title": "B", "description": "two"}),
    ({"x-intellij-html-description": "<b>a</b>", "examples": [1]}, {"x-intellij-html-description": "b", "examples": [2]}),
    ({"$comment": "a", "default": 1, "x-order": 1}, {"$comment": "b", "default": 2, "x-order": 2}),
])
def test_annotations_never_block_an_allof_merge(a, b):
    out, relaxed = prepare_schema({"allOf": [{"type": "object", "properties": {"p": {"type": "integer"}}, **a},
                                             {"properties": {"q": {"type": "string"}}, **b}]})
    assert set(out["properties"]) == {"p", "q"} and relaxed == []
    assert {k: out[k] for k in a} == a  # the first member's annotations are kept


def test_dependencies_become_an_anyof_with_the_same_meaning():
    import jsonschema

    schema = {"type": "object", "properties": {"browser": {"type": "boolean"}, "node": {"type": "boolean"}},
              "dependencies": {"browser": ["node"]}}
    out, relaxed = prepare_schema(schema, engine="llguidance")
    assert relaxed == [] and len(out["anyOf"]) == 2 and "dependencies" not in str(out)
    for instance in ({}, {"node": True}, {"browser": True, "node": False}):
        jsonschema.validate(instance, schema)
        assert jsonschema.Draft7Validator(out).is_valid(instance), instance
    assert not jsonschema.Draft7Validator(out).is_valid({"browser": True})
    closed, _ = prepare_schema(schema)  # xgrammar: no `false` subschemas; its strict mode keeps absent keys out
    assert [set(b["properties"]) for b in closed["anyOf"]] == [{"node"}, {"browser", "node"}]
    required, _ = prepare_schema({**schema, "required": ["browser"]})  # always present: a single branch
    assert "anyOf" not in required and set(required["required"]) == {"browser", "node"}


def test_an_unknown_format_is_an_annotation():
    assert prepare_schema({"type": "string", "format": "x-color"})[0] == {"type": "string"}
    assert prepare_schema({"type": "string", "format": "date"})[0] == {"type": "string", "format": "date"}


def test_not_strict_drops_and_reports_the_keywords():
    out, relaxed = prepare_schema({"type": "integer", "not": {"const": 3}, "if": {}}, strict=False)
    assert out == {"type": "integer"} and relaxed == ["if", "not"]
    out, relaxed = prepare_schema({"oneOf": [{"type": "integer"}, {"type": "number"}]}, strict=False)
    assert "anyOf" in out and relaxed == ["oneOf"]


def test_output_violation_names_the_path():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert output_violation(schema, '{"a":1}') is None
    assert "$.a" in output_violation(schema, '{"a":"x"}')
    assert "not JSON" in output_violation(schema, '{"a":')
