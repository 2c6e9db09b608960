"""Scoring: answers against gold examples, field by field → one model's section of the report.

Metric names (the keys of report["metrics"], usable in `--min` and compared with `--baseline`):
- `json_valid`: the answer parses as a JSON object;
- `schema_valid`: it also validates against the task's output model;
- `exact_match`: valid and every field correct by its comparator;
- `field.<path>`: the field's accuracy (`field.tool`, `field.address.city`, `field.items[].unit_price`);
- `field.<path>.token_f1` (strings), `.precision`/`.recall`/`.f1` (lists),
  `.null_precision`/`.null_recall` (Optional fields; "positive" = the answer is null).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from typing import Any

from pydantic import BaseModel, ValidationError

from schemabuild.contract import canonical_json
from schemabuild.evaluate.compare import MISSING, UNPARSED, Sentinel, compare_values, field_pairs, value_label
from schemabuild.evaluate.fields import field_specs
from schemabuild.task import Example, Task

PRIMARY = "finetuned"  # the fine-tuned model's key in report["models"]


@dataclasses.dataclass
class Answer:
    """One model's answer to one input, as scored: raw text plus what the decoder measured."""
    text: str | None
    """The raw answer text (JSON expected); None when there was no answer."""
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    """Why there is no answer (teacher failure, decoder error)."""


def as_answer(pred: Any) -> Answer:
    """An Answer from a decoder Prediction, a teacher's Labelled, a string, a dict or a model instance."""
    if isinstance(pred, Answer):
        return pred
    if pred is None:
        return Answer(None, error="no answer")
    if isinstance(pred, str):
        return Answer(pred)
    if isinstance(pred, BaseModel):
        return Answer(pred.model_dump_json())
    if isinstance(pred, dict):
        return Answer(json.dumps(pred, ensure_ascii=False))
    text = getattr(pred, "text", None)
    if text is None:
        text = getattr(pred, "raw", None)
    if text is None and getattr(pred, "output", None) is not None:
        text = canonical_json(pred.output)
    return Answer(
        text,
        latency_ms=getattr(pred, "latency_ms", None),
        prompt_tokens=getattr(pred, "prompt_tokens", None),
        completion_tokens=getattr(pred, "completion_tokens", None),
        finish_reason=getattr(pred, "finish_reason", None),
        error=getattr(pred, "error", None),
    )


def _parse(task: Task, answer: Answer) -> tuple[Any, bool, bool, str | None]:
    """(object to score, parsed, valid, error)."""
    if answer.text is None:
        return UNPARSED, False, False, answer.error or "no answer"
    try:
        obj = json.loads(answer.text)
    except (json.JSONDecodeError, TypeError) as exc:
        why = f"not JSON: {exc}"
        if answer.finish_reason == "length":
            why += " (cut off at the token limit)"
        return UNPARSED, False, False, why
    if not isinstance(obj, dict):
        return UNPARSED, True, False, f"not a JSON object: {type(obj).__name__}"
    try:
        return task.output.model_validate(obj).model_dump(mode="json"), True, True, None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        return obj, True, False, f"schema: field {loc!r}: {err['msg']}"


def _rate(num: float, den: float) -> float | None:
    return num / den if den else None


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def score(task: Task, examples: list[Example], answers: list, name: str = PRIMARY, source: str = "") -> dict:
    """Score answers against gold examples field by field; returns one model's section of the report."""
    if len(examples) != len(answers):
        raise ValueError(f"{len(examples)} examples but {len(answers)} answers")
    specs = field_specs(task)
    answers = [as_answer(a) for a in answers]
    n = len(examples)
    parsed = valid = exact = 0
    per_field: dict[str, list[dict]] = {s.path: [] for s in specs}
    confusion: dict[str, dict[str, Counter]] = {s.path: {} for s in specs if s.values is not None}
    nulls = {s.path: Counter() for s in specs if s.optional}
    rows = []
    for i, (ex, ans) in enumerate(zip(examples, answers)):
        gold = task.validate_output(ex.output, f"gold row {i}").model_dump(mode="json")
        obj, ok_parse, ok_valid, error = _parse(task, ans)
        parsed += ok_parse
        valid += ok_valid
        wrong = {}
        for spec in specs:
            for where, g, p in field_pairs(spec.path, gold, obj):
                result = compare_values(spec, g, p)
                per_field[spec.path].append(result)
                if not result["correct"]:
                    wrong[where] = {"expected": g, "got": None if isinstance(p, Sentinel) else p,
                                    **({"missing": True} if isinstance(p, Sentinel) or g is MISSING else {})}
                    if g is MISSING:
                        wrong[where]["expected"] = None
                if spec.values is not None:
                    gl, pl = value_label(g, spec.values), value_label(p, spec.values)
                    confusion[spec.path].setdefault(gl, Counter())[pl] += 1
                if spec.optional and g is not MISSING:
                    c = nulls[spec.path]
                    gold_null, pred_null = g is None, p is None
                    c["gold_null"] += gold_null
                    c["pred_null"] += pred_null
                    c["both_null"] += gold_null and pred_null
        is_exact = ok_valid and not wrong
        exact += is_exact
        rows.append({
            "i": i, "input": ex.input, "expected": gold,
            "got": obj if not isinstance(obj, Sentinel) else None, "text": ans.text,
            "parsed": ok_parse, "valid": ok_valid, "exact": is_exact, "error": error,
            "wrong": {k: v for k, v in wrong.items()},
            "latency_ms": ans.latency_ms, "prompt_tokens": ans.prompt_tokens,
            "completion_tokens": ans.completion_tokens, "finish_reason": ans.finish_reason,
        })

    metrics: dict[str, float | None] = {
        "json_valid": _rate(parsed, n), "schema_valid": _rate(valid, n), "exact_match": _rate(exact, n),
    }
    fields = {spec.path: _field_summary(spec, per_field[spec.path], nulls.get(spec.path), confusion.get(spec.path), metrics)
              for spec in specs}
    latency, tokens = _timing(answers)
    finish = Counter(a.finish_reason for a in answers if a.finish_reason is not None)
    return {
        "name": name, "source": source, "n": n, "metrics": metrics, "fields": fields,
        "latency_ms": latency, "tokens": tokens, "finish_reasons": dict(finish),
        "rows": rows,
    }


def _field_summary(spec, results: list[dict], nulls: Counter | None, confusion: dict | None, metrics: dict) -> dict:
    """One field's section (accuracy, comparator extras, null P/R, confusion matrix); adds its metrics to `metrics`."""
    m = len(results)
    info: dict[str, Any] = {"comparator": spec.comparator, "optional": spec.optional, "n": m,
                            "accuracy": _rate(sum(r["correct"] for r in results), m)}
    metrics[f"field.{spec.path}"] = info["accuracy"]
    for extra in ("token_f1", "precision", "recall", "f1"):
        if results and extra in results[0]:
            info[extra] = _rate(sum(r[extra] for r in results), m)
            metrics[f"field.{spec.path}.{extra}"] = info[extra]
    if spec.comparator == "float":
        info["tolerance"] = spec.tolerance
    if spec.comparator in ("set", "list"):
        info["ordered"] = spec.ordered
    if spec.optional:
        c = nulls
        info["null_precision"] = _rate(c["both_null"], c["pred_null"])
        info["null_recall"] = _rate(c["both_null"], c["gold_null"])
        metrics[f"field.{spec.path}.null_precision"] = info["null_precision"]
        metrics[f"field.{spec.path}.null_recall"] = info["null_recall"]
    if spec.values is not None:
        labels = [value_label(v, spec.values) for v in spec.values]
        seen = set(confusion) | {p for row in confusion.values() for p in row}
        labels += [x for x in ("null", "(invalid)") if x in seen and x not in labels]
        info["labels"] = labels
        info["confusion"] = {g: dict(row) for g, row in confusion.items()}
        info["per_value"] = {
            g: _rate(row.get(g, 0), sum(row.values())) for g, row in confusion.items()
        }
    return info


def _timing(answers: list[Answer]) -> tuple[dict | None, dict | None]:
    """(latency summary, token counts) over the answers that measured them."""
    lat = [a.latency_ms for a in answers if a.latency_ms is not None]
    latency = None
    if lat:
        latency = {"mean": sum(lat) / len(lat), "p50": _percentile(lat, 0.5), "p90": _percentile(lat, 0.9),
                   "max": max(lat), "values": [round(x, 3) for x in lat]}
    ptoks = [a.prompt_tokens for a in answers if a.prompt_tokens is not None]
    ctoks = [a.completion_tokens for a in answers if a.completion_tokens is not None]
    tokens = None
    if ptoks or ctoks:
        tokens = {"prompt_mean": _rate(sum(ptoks), len(ptoks)), "completion_mean": _rate(sum(ctoks), len(ctoks)),
                  "prompt_total": sum(ptoks), "completion_total": sum(ctoks)}
    return latency, tokens
