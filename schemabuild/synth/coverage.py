"""What the offline teacher's rows cover, and the one line it announces at synth time."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from schemabuild.synth.derive import label_leaves
from schemabuild.synth.shapes import field_key, schema_leaves


def coverage(schema: dict, outputs: list[dict], no_span: dict[str, int], n_examples: int) -> dict:
    """What the rows cover: their count, the lengths of each list, each label field's values (and the ones
    missing), and the fields whose example values have no span in their input."""
    lengths: dict[str, set] = defaultdict(set)
    values: dict[str, set] = defaultdict(set)
    allowed: dict[str, list] = {}
    for out in outputs:
        for path, value in _walk_lists(out):
            lengths[".".join(field_key(path))].add(len(value))
        for path, value in label_leaves(schema, out):
            key = ".".join(field_key(path))
            values[key].add(json.dumps(value))
            if key not in allowed:
                allowed[key] = _allowed(schema, path)
    return {
        "rows": len(outputs),
        "list_lengths": {k: sorted(v) for k, v in sorted(lengths.items())},
        "values": {k: sorted(json.loads(x) for x in v) for k, v in sorted(values.items())},
        "values_missing": {k: [a for a in allowed[k] if json.dumps(a) not in values[k]]
                           for k in sorted(values) if any(json.dumps(a) not in values[k] for a in allowed[k])},
        "no_span": {k: f"{v} of {n_examples} examples" for k, v in sorted(no_span.items())},
    }


def _walk_lists(value: Any, path: tuple = ()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_lists(v, path + (k,))
    elif isinstance(value, list):
        yield path, value
        for i, v in enumerate(value):
            yield from _walk_lists(v, path + (i,))


def _allowed(schema: dict, path: tuple) -> list:
    """Every value an enum, const or bool field allows."""
    out: list = []
    for b in schema_leaves(schema, path):
        out += b.get("enum", []) + ([b["const"]] if "const" in b else [])
        out += [True, False] if b.get("type") == "boolean" else []
    return [json.loads(v) for v in dict.fromkeys(json.dumps(v) for v in out)]


def announce(cov: dict) -> str:
    """The one line said at synth time: rows, list lengths, label values covered, fields with no span, and the
    rows of each kind of carrier (where the teacher adds `kinds`)."""
    bits = [f"{cov['rows']} rows"]
    for k, v in cov["list_lengths"].items():
        bits.append(f"{k} lengths {v[0]}-{v[-1]}" if v else f"{k} empty")
    for k, v in cov["values"].items():
        missing = cov["values_missing"].get(k, [])
        bits.append(f"{k} {len(v)}/{len(v) + len(missing)} values" + (f" (none with {', '.join(map(str, missing))}: "
                                                                       "add an example)" if missing else ""))
    if cov["no_span"]:
        bits.append("no span to align for " + ", ".join(f"{k} ({v})" for k, v in cov["no_span"].items())
                    + ": those keep the example's value; add an example that writes it as the output has it")
    if cov.get("kinds"):
        bits.append("rows by kind: " + ", ".join(f"{k} {v}" for k, v in cov["kinds"].items())
                    + (f" ({cov['in_words']} of them with an integer in words)" if cov.get("in_words") else ""))
    return "; ".join(bits)
