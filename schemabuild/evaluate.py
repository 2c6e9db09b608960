"""Evaluate: per-field accuracy derived from the output schema, reports (json, md, html) and a CI gate.

    schemabuild eval tool_picker --min json_valid=1.0 --min field.tool=0.9 --compare base

setup (run, gold set, models) → run (predict, score every field by its type) → save (report.json,
report.md, report.html with inline SVG plots, predictions.jsonl) → gate (exit code).

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
import datetime as _dt
import enum
import html
import json
import math
import types
import typing
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from schemabuild.config import ConfigError
from schemabuild.task import Example, FieldEval, Task, TaskError

COMPARATORS = ("exact", "float", "string", "date", "set", "list")
COMPARE_WITH = ("base", "teacher")
DEFAULT_FLOAT_TOLERANCE = 1e-3
PRIMARY = "finetuned"  # the fine-tuned model's key in report["models"]


@dataclasses.dataclass
class EvalConfig:
    """Settings of `schemabuild eval` (each field is a CLI flag)."""

    run: str | None = None
    """Run directory or run id [default: the task's latest run]."""
    data: Path | None = None
    """Gold set (JSONL of {"input", "output"} rows) [default: evals/<task>.jsonl beside the tasks folder]."""
    compare: list[str] = dataclasses.field(default_factory=list)
    """Also score `base` (the un-fine-tuned base model) or `teacher` (the synthesis teacher) on the same rows."""
    min: list[str] = dataclasses.field(default_factory=list)
    """Gate threshold METRIC=VALUE, e.g. json_valid=1.0, schema_valid=1.0, field.tool=0.9, exact_match=0.5."""
    baseline: Path | None = None
    """An older report.json: any metric that drops by more than --tolerance fails the gate."""
    tolerance: float = 0.02
    """Largest drop against --baseline that still passes."""
    batch_size: int = 16
    """Inputs decoded together."""
    limit: int | None = None
    """Score only the first N rows (a quick check)."""
    out: Path | None = None
    """Report folder [default: <run>/eval]."""

    def __post_init__(self) -> None:
        self.compare = list(self.compare or [])
        self.min = list(self.min or [])
        for name in self.compare:
            if name not in COMPARE_WITH:
                raise ConfigError(f"--compare {name}: expected one of {', '.join(COMPARE_WITH)}")
        self.thresholds = parse_min(self.min)
        if self.tolerance is None or not self.tolerance >= 0:
            raise ConfigError(f"--tolerance {self.tolerance}: must be >= 0")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit}: must be >= 1")
        for name in ("data", "baseline", "out"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))


def parse_min(specs) -> dict[str, float]:
    """{"field.tool": 0.9} from ["field.tool=0.9"]; a bad spec is a ConfigError naming --min."""
    if isinstance(specs, dict):
        specs = [f"{k}={v}" for k, v in specs.items()]
    out: dict[str, float] = {}
    for spec in specs:
        name, sep, value = str(spec).partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--min {spec!r}: expected METRIC=VALUE, e.g. field.tool=0.9")
        try:
            threshold = float(value)
        except ValueError:
            raise ConfigError(f"--min {spec!r}: {value.strip()!r} is not a number") from None
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"--min {spec!r}: the threshold must be between 0 and 1")
        out[name] = threshold
    return out


# ---- fields from the schema ------------------------------------------------------------------------

@dataclasses.dataclass
class FieldSpec:
    """How one leaf (or list) of the output model is scored."""

    path: str
    """Dotted path; `[]` marks list elements (`items[].unit_price`)."""
    comparator: str
    """One of COMPARATORS."""
    optional: bool = False
    """None is an allowed value: null precision/recall are reported."""
    values: list | None = None
    """The allowed values of an enum-like field (Literal, Enum, bool): a confusion matrix is reported."""
    tolerance: float | None = None
    """Relative tolerance of float fields."""
    ordered: bool = False
    """Lists: compare in order."""
    element: str = "exact"
    """Lists: how elements are normalised before comparing (exact, string, date, float)."""


def _unwrap_optional(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap_optional(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            inner_opt, inner = _unwrap_optional(args[0])
            return optional or inner_opt, inner
        return optional, typing.Union[tuple(args)] if args else type(None)
    return False, tp


def _is_model(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _kind(tp) -> tuple[str, list | None]:
    """(comparator, enum values) chosen from a (non-optional) type."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "exact", list(typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "exact", [m.value for m in tp]
    if tp is bool:
        return "exact", [True, False]
    if tp is int:
        return "exact", None
    if tp is float:
        return "float", None
    if tp is str:
        return "string", None
    if tp in (_dt.date, _dt.datetime, _dt.time):
        return "date", None
    return "exact", None


def field_specs(task_or_model, overrides: dict[str, FieldEval] | None = None) -> list[FieldSpec]:
    """Every scored field of an output model, walked from its type annotations, with the task's overrides."""
    if isinstance(task_or_model, Task):
        model, overrides, owner = task_or_model.output, task_or_model.fields, f"task {task_or_model.name!r}"
    else:
        model, owner = task_or_model, model_name(task_or_model)
    overrides = dict(overrides or {})
    specs: list[FieldSpec] = []

    def walk(m: type[BaseModel], prefix: str, parent_optional: bool) -> None:
        for name, info in m.model_fields.items():
            path = prefix + name
            optional, tp = _unwrap_optional(info.annotation)
            optional = optional or parent_optional
            if _is_model(tp):
                walk(tp, path + ".", optional)
                continue
            origin = typing.get_origin(tp)
            if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
                args = [a for a in typing.get_args(tp) if a is not Ellipsis]
                _, inner = _unwrap_optional(args[0]) if args else (False, Any)
                element = "exact" if _is_model(inner) else _kind(inner)[0]
                specs.append(FieldSpec(path, "set", optional, element=element))
                if _is_model(inner):
                    walk(inner, path + "[].", False)
                continue
            comparator, values = _kind(tp)
            specs.append(FieldSpec(path, comparator, optional, values=values))

    walk(model, "", False)
    by_path = {s.path: s for s in specs}
    for path, fe in overrides.items():
        spec = by_path.get(path)
        if spec is None:
            known = ", ".join(by_path) or "none"
            raise TaskError(f"{owner}: fields[{path!r}]: no such field (fields: {known})")
        if fe.comparator is not None:
            if fe.comparator not in COMPARATORS:
                raise TaskError(f"{owner}: fields[{path!r}].comparator {fe.comparator!r}: "
                                f"expected one of {', '.join(COMPARATORS)}")
            if fe.comparator in ("set", "list") and spec.comparator not in ("set", "list"):
                raise TaskError(f"{owner}: fields[{path!r}].comparator {fe.comparator!r}: the field is not a list")
            spec.comparator = fe.comparator
        if fe.tolerance is not None:
            if not fe.tolerance >= 0:
                raise TaskError(f"{owner}: fields[{path!r}].tolerance must be >= 0")
            spec.tolerance = fe.tolerance
        if fe.ordered:
            spec.ordered = True
            if spec.comparator == "set":
                spec.comparator = "list"
        if spec.comparator != "exact":
            spec.values = None
    for spec in specs:
        if spec.comparator == "float" and spec.tolerance is None:
            spec.tolerance = DEFAULT_FLOAT_TOLERANCE
        if spec.comparator == "list":
            spec.ordered = True
    return specs


def model_name(model) -> str:
    return getattr(model, "__name__", str(model))


# ---- comparators -----------------------------------------------------------------------------------

class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


MISSING = _Sentinel("<missing element>")  # a list element one side has and the other lacks
UNPARSED = _Sentinel("<no JSON object>")  # the answer was not a JSON object at all


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


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _element_key(value: Any, element: str) -> str:
    if element == "string" and isinstance(value, str):
        return normalize_text(value)
    if element == "date" and value is not None:
        return normalize_date(value)
    if element == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(round(float(value), 6))
    return _canon(value)


def _lcs(a: list, b: list) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compare_values(spec: FieldSpec, gold: Any, pred: Any) -> dict:
    """Score one (gold, predicted) pair: {"correct": bool} plus the comparator's extras."""
    broken = pred is UNPARSED or pred is MISSING or gold is MISSING
    c = spec.comparator
    if c in ("set", "list"):
        if broken:
            return {"correct": False, "precision": 0.0, "recall": 0.0, "f1": 0.0}
        g = [_element_key(v, spec.element) for v in (gold or [])] if isinstance(gold, list) or gold is None else [_canon(gold)]
        p = [_element_key(v, spec.element) for v in (pred or [])] if isinstance(pred, list) or pred is None else [_canon(pred)]
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
        if not (_is_number(gold) and _is_number(pred)):
            return {"correct": False}
        tol = spec.tolerance if spec.tolerance is not None else DEFAULT_FLOAT_TOLERANCE
        return {"correct": math.isclose(float(gold), float(pred), rel_tol=tol, abs_tol=1e-12)}
    if c == "date":
        return {"correct": normalize_date(gold) == normalize_date(pred)}
    return {"correct": _canon(gold) == _canon(pred)}


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


def _label(value: Any, values: list | None) -> str:
    if value is UNPARSED or value is MISSING:
        return "(invalid)"
    if value is None:
        return "null"
    if values is not None and value not in values:
        return "(invalid)"
    return value if isinstance(value, str) else _canon(value)


# ---- scoring ---------------------------------------------------------------------------------------

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
        from schemabuild.contract import canonical_json

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
                    wrong[where] = {"expected": g, "got": None if isinstance(p, _Sentinel) else p,
                                    **({"missing": True} if isinstance(p, _Sentinel) or g is MISSING else {})}
                    if g is MISSING:
                        wrong[where]["expected"] = None
                if spec.values is not None:
                    gl, pl = _label(g, spec.values), _label(p, spec.values)
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
            "got": obj if not isinstance(obj, _Sentinel) else None, "text": ans.text,
            "parsed": ok_parse, "valid": ok_valid, "exact": is_exact, "error": error,
            "wrong": {k: v for k, v in wrong.items()},
            "latency_ms": ans.latency_ms, "prompt_tokens": ans.prompt_tokens,
            "completion_tokens": ans.completion_tokens, "finish_reason": ans.finish_reason,
        })

    metrics: dict[str, float | None] = {
        "json_valid": _rate(parsed, n), "schema_valid": _rate(valid, n), "exact_match": _rate(exact, n),
    }
    fields: dict[str, dict] = {}
    for spec in specs:
        results = per_field[spec.path]
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
            c = nulls[spec.path]
            info["null_precision"] = _rate(c["both_null"], c["pred_null"])
            info["null_recall"] = _rate(c["both_null"], c["gold_null"])
            metrics[f"field.{spec.path}.null_precision"] = info["null_precision"]
            metrics[f"field.{spec.path}.null_recall"] = info["null_recall"]
        if spec.values is not None:
            labels = [_label(v, spec.values) for v in spec.values]
            seen = set(confusion[spec.path]) | {p for row in confusion[spec.path].values() for p in row}
            labels += [x for x in ("null", "(invalid)") if x in seen and x not in labels]
            info["labels"] = labels
            info["confusion"] = {g: dict(row) for g, row in confusion[spec.path].items()}
            info["per_value"] = {
                g: _rate(row.get(g, 0), sum(row.values())) for g, row in confusion[spec.path].items()
            }
        fields[spec.path] = info

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
    finish = Counter(a.finish_reason for a in answers if a.finish_reason is not None)
    return {
        "name": name, "source": source, "n": n, "metrics": metrics, "fields": fields,
        "latency_ms": latency, "tokens": tokens, "finish_reasons": dict(finish),
        "rows": rows,
    }


# ---- the gate --------------------------------------------------------------------------------------

def check_gate(metrics: dict, thresholds: dict[str, float], baseline: dict | None = None,
               tolerance: float = 0.02, baseline_name: str = "baseline") -> list[str]:
    """One line per failure: a metric below its --min, or one that dropped more than `tolerance` vs the baseline."""
    failures = []
    for name, threshold in thresholds.items():
        if name not in metrics:
            known = ", ".join(k for k in metrics if k.count(".") <= 1)
            failures.append(f"FAIL --min {name}={threshold:g}: no such metric (known: {known})")
            continue
        value = metrics[name]
        if value is None:
            failures.append(f"FAIL --min {name}={threshold:g}: not measured (no rows to score it on)")
        elif value < threshold - 1e-12:
            failures.append(f"FAIL {name} = {value:.3f} < {threshold:g} (--min)")
    for name, old in (baseline or {}).items():
        new = metrics.get(name)
        if not (_is_number(old) and _is_number(new)):
            continue
        if old - new > tolerance + 1e-12:
            failures.append(f"FAIL {name} regressed {old:.3f} -> {new:.3f} "
                            f"(-{old - new:.3f} > --tolerance {tolerance:g}) vs {baseline_name}")
    return failures


# ---- setup → run → save ----------------------------------------------------------------------------

def default_data(task: Task) -> Path:
    """evals/<task>.jsonl beside the tasks folder."""
    base = Path(task.source).resolve().parent.parent if task.source else Path.cwd()
    return base / "evals" / f"{task.name}.jsonl"


def load_rows(task: Task, path: Path) -> list[Example]:
    """Gold rows ({"input", "output"}) or chat rows ({"messages": [...]}) as validated Examples."""
    from schemabuild.contract import split_chat_row
    from schemabuild.runs import read_jsonl
    from schemabuild.task import load_jsonl_examples

    path = Path(path)
    if not path.is_file():
        raise TaskError(f"no eval file {path}")
    first = next(iter(read_jsonl(path)), None) if path.stat().st_size else None
    if isinstance(first, dict) and "messages" in first:
        rows = []
        for lineno, row in enumerate(read_jsonl(path), 1):
            try:
                _, text, target = split_chat_row(row)
            except (KeyError, TypeError):
                raise TaskError(f"{path}:{lineno}: a chat row needs user and assistant messages") from None
            rows.append(Example(text, task.validate_output(target, f"{path.name}:{lineno}")))
        if not rows:
            raise TaskError(f"{path}: no rows")
        return rows
    return load_jsonl_examples(task, path)


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def _base_model_ref(run_dir: Path, contract: dict) -> str | None:
    """Where the un-fine-tuned base of a run is: run_dir/base/, the manifest's record, or contract["base_model"]."""
    from schemabuild.runs import read_json

    for name in ("base", "tiny_base"):  # tiny runs keep their untrained base in tiny_base/
        if (run_dir / name / "config.json").is_file():
            return str(run_dir / name)
    saved = run_dir / "train_config.json"
    if saved.is_file():
        try:
            where = read_json(saved).get("base_model")
        except (OSError, ValueError, AttributeError):
            where = None
        if where and where != "tiny":
            return str(where)
    ref = contract.get("base_model")
    if not ref or ref == "tiny":
        return None
    return str(ref)


def _predict_base(task, run_dir: Path, texts: list[str], cfg: EvalConfig, quiet: bool):
    """(answers, source) of the un-fine-tuned base, or (None, why) when it cannot be had."""
    from schemabuild.contract import load_contract
    from schemabuild.predictor import Predictor

    ref = _base_model_ref(run_dir, load_contract(run_dir / "model"))
    if ref is None:
        return None, f"base comparison skipped: {run_dir} records no base model directory"
    try:
        predictor = Predictor.from_base(task, ref)
    except (OSError, ValueError, TaskError) as exc:
        return None, f"base comparison skipped: cannot load base {ref}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return predictor.predict_many(texts, batch_size=cfg.batch_size, progress=not quiet), ref


def run_synth_config(run_dir: Path, **overrides):
    """The SynthConfig the run's data was made with (data/manifest.json), else the defaults; `overrides` win."""
    from schemabuild.runs import read_json
    from schemabuild.synth import SynthConfig

    names = {f.name for f in dataclasses.fields(SynthConfig)}
    settings = {}
    manifest = Path(run_dir) / "data" / "manifest.json"
    if manifest.is_file():
        try:
            saved = read_json(manifest).get("config") or {}
            settings = {k: v for k, v in saved.items() if k in names and k not in ("run", "from_log", "eval_file")}
        except (OSError, ValueError, AttributeError):
            settings = {}
    settings.update({k: v for k, v in overrides.items() if k in names})
    try:
        return SynthConfig(**settings)
    except (TypeError, ValueError):
        return SynthConfig(**{k: v for k, v in overrides.items() if k in names})


def _teacher_answers(task, run_dir: Path, texts: list[str], runs_dir):
    """(answers, source) from the synthesis teacher, or (None, why) when offline."""
    import asyncio
    import os

    from schemabuild.runs import cache_path
    from schemabuild.teachers import make_teacher

    if not os.environ.get("OPENAI_API_KEY") and not os.environ.get("OPENAI_BASE_URL"):
        return None, "teacher comparison skipped: no OPENAI_API_KEY / OPENAI_BASE_URL (offline)"
    teacher = make_teacher(task, run_synth_config(run_dir), cache_path(runs_dir))
    labelled = asyncio.run(teacher.label(task, texts))
    return [as_answer(x) for x in labelled], f"{teacher.name}:{teacher.model}"


def evaluate(task: Task, cfg: EvalConfig, runs_dir=None, quiet: bool = False) -> dict:
    """Score the run's model (and `--compare` models) on the gold set, write the reports, apply the gate."""
    from schemabuild.predictor import Predictor
    from schemabuild.runs import read_json, resolve_run

    # setup
    run_dir = resolve_run(task.name, cfg.run, runs_dir, need="model")
    data = cfg.data or default_data(task)
    examples = load_rows(task, data)
    if cfg.limit:
        examples = examples[: cfg.limit]
    baseline = None
    if cfg.baseline is not None:
        if not cfg.baseline.is_file():
            raise ConfigError(f"--baseline {cfg.baseline}: no such file")
        try:
            baseline = read_json(cfg.baseline)["metrics"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"--baseline {cfg.baseline}: not a schemabuild report.json") from None
    out = cfg.out or run_dir / "eval"
    texts = [ex.input for ex in examples]
    notes: list[str] = []

    # run
    predictor = Predictor.from_run(task, run=str(run_dir), runs_dir=runs_dir)
    preds = predictor.predict_many(texts, batch_size=cfg.batch_size, progress=not quiet)
    models = {PRIMARY: score(task, examples, preds, PRIMARY, str(run_dir / "model"))}
    for other in cfg.compare:
        if other == "base":
            answers, source = _predict_base(task, run_dir, texts, cfg, quiet)
        else:
            answers, source = _teacher_answers(task, run_dir, texts, runs_dir)
        if answers is None:
            notes.append(source)
            _say(source, quiet)
            continue
        models[other] = score(task, examples, answers, other, source)

    failures = check_gate(models[PRIMARY]["metrics"], cfg.thresholds, baseline, cfg.tolerance,
                          str(cfg.baseline) if cfg.baseline else "baseline")
    report = {
        "task": task.name,
        "run": str(run_dir),
        "data": str(data),
        "n": len(examples),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "metrics": models[PRIMARY]["metrics"],
        "models": models,
        "gate": {"passed": not failures, "failures": failures, "min": cfg.thresholds,
                 "baseline": str(cfg.baseline) if cfg.baseline else None, "tolerance": cfg.tolerance},
        "notes": notes,
        "out": str(out),
    }

    # save
    write_reports(report, out)
    return report


def write_reports(report: dict, out: Path) -> dict[str, Path]:
    """report.json, report.md, report.html and predictions.jsonl under `out`."""
    from schemabuild.runs import write_json, write_jsonl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slim = {**report, "models": {k: {**m, "rows": [r for r in m["rows"] if not r["exact"]]}
                                 for k, m in report["models"].items()}}
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html",
             "predictions": out / "predictions.jsonl"}
    write_json(paths["json"], slim)
    paths["md"].write_text(render_markdown(report))
    paths["html"].write_text(render_html(report))
    write_jsonl(paths["predictions"], ({"model": k, **row} for k, m in report["models"].items() for row in m["rows"]))
    return paths


def run_eval(task, cfg: EvalConfig, runs_dir=None) -> int:
    """`schemabuild eval`: evaluate, print the summary and one line per failed threshold; 0 passes, 1 fails."""
    report = evaluate(task, cfg, runs_dir)
    print(format_summary(report))
    return 0 if report["gate"]["passed"] else 1


def evaluate_run(task, run_dir, quiet: bool = False, **settings) -> dict:
    """Evaluate a freshly trained run with the default settings (called at the end of `schemabuild train`).

    Scores on the gold set evals/<task>.jsonl, or on the run's validation split when there is none.
    """
    run_dir = Path(run_dir)
    cfg = EvalConfig(run=str(run_dir), **settings)
    note = None
    if cfg.data is None and not default_data(task).is_file():
        val = run_dir / "data" / "val.jsonl"
        if not val.is_file() or not val.stat().st_size:
            msg = f"no gold set {default_data(task)} and no {val}: skipping evaluation"
            _say(msg, quiet)
            return {"task": task.name, "run": str(run_dir), "skipped": msg}
        cfg.data = val
        note = f"no gold set {default_data(task)}: scored on the validation split {val} (write a gold set for honest figures)"
        _say(note, quiet)
    report = evaluate(task, cfg, quiet=quiet)
    if note:
        report["notes"].insert(0, note)
    return report


def assert_gate(task_name: str, min: dict[str, float] | None = None, run: str | None = None, data=None,
                baseline=None, tolerance: float = 0.02, runs_dir=None, tasks_dir=None, limit: int | None = None,
                compare: list[str] | None = None) -> dict:
    """For pytest: evaluate the task's latest (or given) run and fail the test with one line per failed threshold.

        from schemabuild.evaluate import assert_gate

        def test_tool_picker():
            assert_gate("tool_picker", min={"json_valid": 1.0, "field.tool": 0.9})
    """
    from schemabuild.task import load_task

    task = load_task(task_name, tasks_dir)
    cfg = EvalConfig(run=str(run) if run else None, data=data, min=[f"{k}={v}" for k, v in (min or {}).items()],
                     baseline=baseline, tolerance=tolerance, limit=limit, compare=list(compare or []))
    report = evaluate(task, cfg, runs_dir, quiet=True)
    if not report["gate"]["passed"]:
        raise AssertionError(f"{task_name} eval gate failed (report: {report['out']}/report.md)\n"
                             + "\n".join(report["gate"]["failures"]))
    return report


def run_is_fresh(task: Task, run_dir: Path) -> bool:
    """Whether a run's model still fits the task: its contract matches and its data came from this task file."""
    from schemabuild.contract import ContractError, check_contract, load_contract
    from schemabuild.runs import read_json

    try:
        check_contract(load_contract(Path(run_dir) / "model"), task)
    except ContractError:
        return False
    manifest = Path(run_dir) / "data" / "manifest.json"
    if manifest.is_file():
        try:
            return read_json(manifest).get("fingerprint") == task.fingerprint()
        except (OSError, ValueError, AttributeError):
            return False
    return True


def ensure_run(task: Task, runs_dir=None, **train_settings) -> Path:
    """The task's latest trained run when it is fresh, else a new one trained with `schemabuild train`'s
    offline-friendly defaults (plus `train_settings`, e.g. n=300). For eval gates in CI."""
    from schemabuild.runs import latest_run

    latest = latest_run(task.name, runs_dir)
    if latest is not None and run_is_fresh(task, latest):
        return latest
    from schemabuild.train import TrainConfig, train_task

    why = "no trained run" if latest is None else f"{latest} is stale for the task as it is now"
    print(f"{task.name}: {why}; training one", flush=True)
    return Path(train_task(task, TrainConfig(eval=False, **train_settings), runs_dir=runs_dir))


# ---- rendering -------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _metric_rows(report: dict) -> list[str]:
    names: list[str] = []
    for m in report["models"].values():
        for k in m["metrics"]:
            if k not in names:
                names.append(k)
    return names


def format_summary(report: dict) -> str:
    """The terminal table: one row per metric, one column per model; gate failures and report paths after."""
    if report.get("skipped"):
        return report["skipped"]
    models = list(report["models"])
    names = _metric_rows(report)
    width = max(len(n) for n in names + ["metric"]) + 2
    lines = [f"eval {report['task']}: {report['n']} rows from {report['data']}"]
    lines.append("metric".ljust(width) + "".join(m.rjust(10) for m in models))
    lines.append("-" * (width + 10 * len(models)))
    for name in names:
        lines.append(name.ljust(width) + "".join(_fmt(report["models"][m]["metrics"].get(name)).rjust(10) for m in models))
    lat = report["models"][PRIMARY].get("latency_ms")
    if lat:
        lines.append(f"latency ms: mean {lat['mean']:.1f}, p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}")
    for note in report.get("notes", []):
        lines.append(note)
    gate = report["gate"]
    if gate["min"] or gate["baseline"]:
        lines += gate["failures"] or ["gate passed"]
    lines.append(f"reports: {report.get('out')}/report.md, report.html, report.json")
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def render_markdown(report: dict) -> str:
    """report.md: metrics per model, per-field details, confusion matrices, gate, wrong examples."""
    models = list(report["models"])
    parts = [f"# Eval report: {report['task']}", "",
             f"Run `{report['run']}`, {report['n']} rows from `{report['data']}`, {report['created']}.", ""]
    for note in report.get("notes", []):
        parts.append(f"- {note}")
    gate = report["gate"]
    parts += ["", "## Gate", ""]
    if gate["min"] or gate["baseline"]:
        parts.append("**passed**" if gate["passed"] else "**failed**")
        parts += [f"- `{f}`" for f in gate["failures"]]
    else:
        parts.append("No thresholds set (`--min`, `--baseline`).")
    parts += ["", "## Metrics", "", _md_table(["metric"] + models,
                                               [[n] + [report["models"][m]["metrics"].get(n) for m in models]
                                                for n in _metric_rows(report)])]
    primary = report["models"][PRIMARY]
    parts += ["", "## Fields", "", _md_table(
        ["field", "comparator", "n", "accuracy", "token F1 / F1", "null P", "null R"],
        [[p, f["comparator"], f["n"], f["accuracy"], f.get("token_f1", f.get("f1")), f.get("null_precision"),
          f.get("null_recall")] for p, f in primary["fields"].items()])]
    for m in models:
        for path, f in report["models"][m]["fields"].items():
            if "confusion" not in f:
                continue
            labels = f["labels"]
            parts += ["", f"### Confusion `{path}` ({m}): rows gold, columns predicted", "",
                      _md_table(["gold \\ pred"] + labels,
                                [[g] + [f["confusion"].get(g, {}).get(p, 0) for p in labels] for g in labels
                                 if g in f["confusion"]])]
    for m in models:
        sec = report["models"][m]
        if sec.get("latency_ms") or sec.get("tokens"):
            lat, tok = sec.get("latency_ms") or {}, sec.get("tokens") or {}
            parts += ["", f"## Latency and tokens ({m})", "",
                      _md_table(["mean ms", "p50 ms", "p90 ms", "max ms", "prompt tokens (mean)", "completion tokens (mean)"],
                                [[lat.get("mean"), lat.get("p50"), lat.get("p90"), lat.get("max"),
                                  tok.get("prompt_mean"), tok.get("completion_mean")]])]
    wrong = [r for r in primary["rows"] if not r["exact"]]
    parts += ["", f"## Wrong answers ({len(wrong)} of {primary['n']}, {PRIMARY})", ""]
    for r in wrong[:50]:
        what = r["error"] or "; ".join(f"`{k}`: expected {json.dumps(v['expected'], ensure_ascii=False)}, "
                                       f"got {json.dumps(v['got'], ensure_ascii=False)}" for k, v in r["wrong"].items())
        parts.append(f"- #{r['i']} {json.dumps(r['input'], ensure_ascii=False)}: {what}")
    if len(wrong) > 50:
        parts.append(f"- ... {len(wrong) - 50} more in predictions.jsonl")
    return "\n".join(parts) + "\n"


PALETTE = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6"]


def svg_bars(report: dict) -> str:
    """Horizontal grouped bars: accuracy-like metrics (rates) per model."""
    models = list(report["models"])
    names = ["json_valid", "schema_valid", "exact_match"] + [f"field.{p}" for p in report["models"][PRIMARY]["fields"]]
    bar_h, gap, left, width = 12, 10, 220, 360
    group_h = bar_h * len(models) + gap
    height = group_h * len(names) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="bars" width="{left + width + 60}" height="{height}" '
           f'role="img" aria-label="accuracy per field and model">']
    for j, m in enumerate(models):
        out.append(f'<rect x="{left + j * 110}" y="4" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
                   f'<text x="{left + j * 110 + 14}" y="13" font-size="11">{html.escape(m)}</text>')
    for i, name in enumerate(names):
        y0 = 26 + i * group_h
        out.append(f'<text x="{left - 6}" y="{y0 + group_h / 2}" font-size="11" text-anchor="end">{html.escape(name)}</text>')
        for j, m in enumerate(models):
            v = report["models"][m]["metrics"].get(name)
            w = 0 if v is None else max(0.0, min(1.0, v)) * width
            y = y0 + j * bar_h
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{PALETTE[j % len(PALETTE)]}">'
                       f'<title>{html.escape(m)} {html.escape(name)} {_fmt(v)}</title></rect>'
                       f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 3}" font-size="9">{_fmt(v)}</text>')
    out.append(f'<line x1="{left}" y1="20" x2="{left}" y2="{height}" stroke="#999"/>')
    out.append("</svg>")
    return "".join(out)


def svg_confusion(field: dict, title: str) -> str:
    """A heatmap of an enum field's confusion matrix (rows gold, columns predicted), colour by row share."""
    labels = field["labels"]
    conf = field["confusion"]
    cell, left, top = 28, 170, 150
    size_w, size_h = left + cell * len(labels) + 10, top + cell * len(labels) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="confusion" width="{size_w}" height="{size_h}" '
           f'role="img" aria-label="{html.escape(title)}">']
    for j, p in enumerate(labels):
        x = left + j * cell + cell / 2
        out.append(f'<text transform="translate({x},{top - 6}) rotate(-60)" font-size="10">{html.escape(p)}</text>')
    for i, g in enumerate(labels):
        row = conf.get(g, {})
        total = sum(row.values())
        y = top + i * cell
        out.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4}" font-size="10" text-anchor="end">{html.escape(g)}</text>')
        for j, p in enumerate(labels):
            count = row.get(p, 0)
            share = count / total if total else 0.0
            color = f"rgba(37,99,235,{share:.3f})" if g == p else f"rgba(239,68,68,{share:.3f})"
            out.append(f'<rect x="{left + j * cell}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{color}" '
                       f'stroke="#ddd"><title>gold {html.escape(g)}, predicted {html.escape(p)}: {count}</title></rect>')
            if count:
                out.append(f'<text x="{left + j * cell + cell / 2}" y="{y + cell / 2 + 4}" font-size="10" '
                           f'text-anchor="middle">{count}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_histogram(values: list[float], title: str, bins: int = 20) -> str:
    """A latency histogram."""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / span * bins))] += 1
    w, h, left, bottom = 400, 140, 30, 30
    bw = w / bins
    top = max(counts) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="histogram" width="{w + left + 10}" height="{h + bottom + 10}" '
           f'role="img" aria-label="{html.escape(title)}">']
    for i, c in enumerate(counts):
        bh = c / top * h
        out.append(f'<rect x="{left + i * bw:.1f}" y="{10 + h - bh:.1f}" width="{bw - 1:.1f}" height="{bh:.1f}" '
                   f'fill="#2563eb"><title>{lo + i * span / bins:.1f}-{lo + (i + 1) * span / bins:.1f} ms: {c}</title></rect>')
    out.append(f'<text x="{left}" y="{h + 24}" font-size="10">{lo:.1f} ms</text>'
               f'<text x="{left + w}" y="{h + 24}" font-size="10" text-anchor="end">{hi:.1f} ms</text>'
               f'<text x="{left - 4}" y="18" font-size="10" text-anchor="end">{top}</text>')
    out.append("</svg>")
    return "".join(out)


def render_html(report: dict) -> str:
    """report.html: a standalone page (inline SVG, no external files) with the plots and the markdown tables."""
    esc = html.escape
    gate = report["gate"]
    body = [f"<h1>Eval report: {esc(report['task'])}</h1>",
            f"<p>Run <code>{esc(report['run'])}</code>, {report['n']} rows from <code>{esc(report['data'])}</code>, "
            f"{esc(report['created'])}.</p>"]
    body += [f"<p class=note>{esc(n)}</p>" for n in report.get("notes", [])]
    if gate["min"] or gate["baseline"]:
        status = "passed" if gate["passed"] else "failed"
        body.append(f"<h2>Gate: <span class={status}>{status}</span></h2><ul>"
                    + "".join(f"<li><code>{esc(f)}</code></li>" for f in gate["failures"]) + "</ul>")
    body += ["<h2>Accuracy per field and model</h2>", svg_bars(report)]
    for m, sec in report["models"].items():
        for path, f in sec["fields"].items():
            if "confusion" in f:
                title = f"confusion {path} ({m})"
                body += [f"<h2>Confusion <code>{esc(path)}</code> ({esc(m)}): rows gold, columns predicted</h2>",
                         svg_confusion(f, title)]
    for m, sec in report["models"].items():
        lat = sec.get("latency_ms")
        if lat and lat.get("values"):
            body += [f"<h2>Latency ({esc(m)}): mean {lat['mean']:.1f} ms, p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}</h2>",
                     svg_histogram(lat["values"], f"latency {m}")]
    models = list(report["models"])
    rows = "".join("<tr><td>" + esc(n) + "</td>" + "".join(
        f"<td>{_fmt(report['models'][m]['metrics'].get(n))}</td>" for m in models) + "</tr>" for n in _metric_rows(report))
    body.append("<h2>Metrics</h2><table><tr><th>metric</th>" + "".join(f"<th>{esc(m)}</th>" for m in models)
                + "</tr>" + rows + "</table>")
    wrong = [r for r in report["models"][PRIMARY]["rows"] if not r["exact"]]
    items = []
    for r in wrong[:100]:
        what = r["error"] or "; ".join(f"{k}: expected {json.dumps(v['expected'], ensure_ascii=False)}, "
                                       f"got {json.dumps(v['got'], ensure_ascii=False)}" for k, v in r["wrong"].items())
        items.append(f"<li>#{r['i']} <q>{esc(r['input'])}</q>: {esc(what)}</li>")
    body.append(f"<h2>Wrong answers ({len(wrong)} of {report['models'][PRIMARY]['n']})</h2><ul>{''.join(items)}</ul>")
    style = ("body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#111}"
             "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}"
             "td:first-child{text-align:left}.failed{color:#b91c1c}.passed{color:#047857}.note{color:#555}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>eval {esc(report['task'])}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
