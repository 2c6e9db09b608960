"""Comparators: how one (gold, predicted) value pair of a field is scored, and pairing values by field path."""

from __future__ import annotations

import datetime as _dt
import json
import math
import unicodedata
from collections import Counter
from typing import Any


from schemabuild.evaluate.fields import DEFAULT_FLOAT_TOLERANCE, FieldSpec

class Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


MISSING = Sentinel("<missing element>")  # a list element one side has and the other lacks


UNPARSED = Sentinel("<no JSON object>")  # the answer was not a JSON object at all


def normalize_text(value: Any) -> str:
    """Case-folded, NFKC, punctuation removed, whitespace collapsed."""
    s = unicodedata.normalize("NFKC", str(value)).casefold()
    s = "".join(" " if unicodedata.category(c).startswith("P") else c for c in s)
    return " ".join(s.split())


def token_f1(gold: Any, pred: Any) -> float:
    """SQuAD-style token F1 between two normalised strings (both empty → 1)."""
    g, p = normalize_text(gold).split(), normalize_text(pred).split()
    if not g and not p:
        return 1.0
    overlap = sum((Counter(g) & Counter(p)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(p), overlap / len(g)
    return 2 * precision * recall / (precision + recall)


def normalize_date(value: Any) -> str:
    """ISO form of a date, datetime (in UTC when it has a zone) or time; other text lower-cased."""
    s = str(value).strip()
    try:
        return _dt.date.fromisoformat(s).isoformat()
    except ValueError:
        pass
    try:
        d = _dt.datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
        if d.tzinfo is not None:
            d = d.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        return d.isoformat()
    except ValueError:
        pass
    try:
        return _dt.time.fromisoformat(s).isoformat()
    except ValueError:
        return s.lower()


def canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _element_key(value: Any, element: str) -> str:
    if element == "string" and isinstance(value, str):
        return normalize_text(value)
    if element == "date" and value is not None:
        return normalize_date(value)
    if element == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(round(float(value), 6))
    return canon(value)


def _lcs(a: list, b: list) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compare_values(spec: FieldSpec, gold: Any, pred: Any) -> dict:
    """Score one (gold, predicted) pair: {"correct": bool} plus the comparator's extras."""
    broken = pred is UNPARSED or pred is MISSING or gold is MISSING
    c = spec.comparator
    if c in ("set", "list"):
        if broken:
            return {"correct": False, "precision": 0.0, "recall": 0.0, "f1": 0.0}
        g = [_element_key(v, spec.element) for v in (gold or [])] if isinstance(gold, list) or gold is None else [canon(gold)]
        p = [_element_key(v, spec.element) for v in (pred or [])] if isinstance(pred, list) or pred is None else [canon(pred)]
        if c == "list":
            hits = _lcs(g, p)
            correct = g == p
            precision = hits / len(p) if p else (1.0 if not g else 0.0)
            recall = hits / len(g) if g else (1.0 if not p else 0.0)
        else:
            gs, ps = set(g), set(p)
            hits = len(gs & ps)
            correct = gs == ps
            precision = hits / len(ps) if ps else (1.0 if not gs else 0.0)
            recall = hits / len(gs) if gs else (1.0 if not ps else 0.0)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"correct": correct, "precision": precision, "recall": recall, "f1": f1}
    if c == "string":
        if broken:
            return {"correct": False, "token_f1": 0.0}
        if gold is None or pred is None:
            ok = gold is None and pred is None
            return {"correct": ok, "token_f1": 1.0 if ok else 0.0}
        return {"correct": normalize_text(gold) == normalize_text(pred), "token_f1": token_f1(gold, pred)}
    if broken:
        return {"correct": False}
    if gold is None or pred is None:
        return {"correct": gold is None and pred is None}
    if c == "float":
        if not (is_number(gold) and is_number(pred)):
            return {"correct": False}
        tol = spec.tolerance if spec.tolerance is not None else DEFAULT_FLOAT_TOLERANCE
        return {"correct": math.isclose(float(gold), float(pred), rel_tol=tol, abs_tol=1e-12)}
    if c == "date":
        return {"correct": normalize_date(gold) == normalize_date(pred)}
    return {"correct": canon(gold) == canon(pred)}


def _get(obj: Any, key: str) -> Any:
    if obj is UNPARSED or obj is MISSING:
        return obj
    return obj.get(key) if isinstance(obj, dict) else None


def field_pairs(path: str, gold: Any, pred: Any, where: str = "") -> list[tuple[str, Any, Any]]:
    """(concrete path, gold value, predicted value) for a spec path; list elements are paired by position.

    A missing key reads as null; an element only one side has pairs with MISSING (always wrong).
    """
    parts = path.split(".", 1)
    head, rest = parts[0], (parts[1] if len(parts) > 1 else None)
    if head.endswith("[]") and rest is not None:
        key = head[:-2]
        g, p = _get(gold, key), _get(pred, key)
        gl = g if isinstance(g, list) else []
        pl = p if isinstance(p, list) else ([] if p is not UNPARSED else [])
        out = []
        if p is UNPARSED:
            pl = [UNPARSED] * len(gl)
        for i in range(max(len(gl), len(pl))):
            ge = gl[i] if i < len(gl) else MISSING
            pe = pl[i] if i < len(pl) else MISSING
            out += field_pairs(rest, ge, pe, f"{where}{key}[{i}].")
        return out
    g, p = _get(gold, head), _get(pred, head)
    if rest is None:
        return [(where + head, g, p)]
    return field_pairs(rest, g, p, where + head + ".")


def value_label(value: Any, values: list | None) -> str:
    if value is UNPARSED or value is MISSING:
        return "(invalid)"
    if value is None:
        return "null"
    if values is not None and value not in values:
        return "(invalid)"
    return value if isinstance(value, str) else canon(value)

