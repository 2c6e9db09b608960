"""Evaluation: comparators against hand-computed figures, the gate, the reports, and `schemabuild eval` end to end."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from enum import Enum
from typing import Literal, Optional

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from schemabuild.config import ConfigError
from schemabuild.evaluate import (
    EvalConfig, check_gate, compare_values, field_specs, format_summary, normalize_text, parse_min, score,
    token_f1, write_reports,
)
from schemabuild.task import Example, FieldEval, Task, TaskError
from tests.conftest import EVALS
from tests.fake_openai import fake_openai  # noqa: F401  (fixture)


# ---- small models --------------------------------------------------------------------------------

class Color(str, Enum):
    red = "red"
    blue = "blue"


class Item(BaseModel):
    name: str
    unit_price: float
    qty: int


class Address(BaseModel):
    city: str
    zip: Optional[str] = None


class Invoice(BaseModel):
    kind: Literal["bill", "refund"]
    paid: bool
    total: float
    when: dt.date
    color: Color
    tags: list[str]
    address: Address
    items: list[Item]
    note: Optional[str] = None


GOLD = {
    "kind": "bill", "paid": True, "total": 100.0, "when": "2024-03-01", "color": "red",
    "tags": ["Urgent", "paper"], "address": {"city": "New York", "zip": None},
    "items": [{"name": "Pen", "unit_price": 1.5, "qty": 2}, {"name": "Ink", "unit_price": 10.0, "qty": 1}],
    "note": None,
}


def invoice_task(fields=None) -> Task:
    return Task(name="invoice", instructions="Read the invoice.", output=Invoice,
                examples=[Example("an invoice", GOLD)], fields=fields or {})


def scored(task, gold_rows, answers):
    return score(task, [Example(f"in {i}", task.validate_output(g)) for i, g in enumerate(gold_rows)], answers)


# ---- fields from the schema ----------------------------------------------------------------------

def test_field_specs_follow_the_types_with_dotted_paths():
    specs = {s.path: s for s in field_specs(invoice_task())}
    assert list(specs) == ["kind", "paid", "total", "when", "color", "tags", "address.city", "address.zip",
                           "items", "items[].name", "items[].unit_price", "items[].qty", "note"]
    assert (specs["kind"].comparator, specs["kind"].values) == ("exact", ["bill", "refund"])
    assert specs["paid"].values == [True, False]
    assert specs["color"].values == ["red", "blue"]
    assert specs["total"].comparator == "float" and specs["total"].tolerance == 1e-3
    assert specs["when"].comparator == "date"
    assert (specs["tags"].comparator, specs["tags"].element) == ("set", "string")
    assert specs["items[].qty"].comparator == "exact" and specs["items[].name"].comparator == "string"
    assert specs["note"].optional and specs["address.zip"].optional and not specs["address.city"].optional


def test_overrides_change_comparator_tolerance_and_order():
    task = invoice_task({"total": FieldEval(tolerance=0.1), "tags": FieldEval(ordered=True),
                         "note": FieldEval(comparator="exact")})
    specs = {s.path: s for s in field_specs(task)}
    assert specs["total"].tolerance == 0.1
    assert specs["tags"].comparator == "list" and specs["tags"].ordered
    assert specs["note"].comparator == "exact"


@pytest.mark.parametrize("fields, needle", [
    ({"nope": FieldEval()}, "fields['nope']: no such field"),
    ({"kind": FieldEval(comparator="fuzzy")}, "fields['kind'].comparator 'fuzzy'"),
    ({"kind": FieldEval(comparator="set")}, "the field is not a list"),
])
def test_bad_overrides_are_one_line_task_errors(fields, needle):
    with pytest.raises(TaskError, match=re.escape(needle)) as exc:
        field_specs(invoice_task(fields))
    assert "\n" not in str(exc.value)


# ---- comparators ---------------------------------------------------------------------------------

def spec_of(path, task=None):
    return {s.path: s for s in field_specs(task or invoice_task())}[path]


def test_string_normalisation_and_token_f1():
    assert normalize_text("  Hello,   WORLD!! ") == "hello world"
    s = spec_of("items[].name")
    assert compare_values(s, "The Eiffel Tower", "the eiffel tower.") == {"correct": True, "token_f1": 1.0}
    # gold 4 tokens, pred 2 tokens, 2 shared: P=1, R=0.5, F1=2/3
    r = compare_values(s, "the eiffel tower night", "eiffel tower")
    assert r["correct"] is False and r["token_f1"] == pytest.approx(2 / 3)
    assert token_f1("a b", "c d") == 0.0


def test_float_relative_tolerance_and_override():
    s = spec_of("total")
    assert compare_values(s, 100.0, 100.05)["correct"]  # 0.05% < 0.1%
    assert not compare_values(s, 100.0, 100.5)["correct"]  # 0.5%
    loose = spec_of("total", invoice_task({"total": FieldEval(tolerance=0.01)}))
    assert compare_values(loose, 100.0, 100.5)["correct"]
    assert not compare_values(s, 100.0, "100")["correct"]


def test_dates_are_normalised():
    s = spec_of("when")
    assert compare_values(s, "2024-03-01", "2024-03-01")["correct"]
    assert compare_values(s, "2024-03-01T12:00:00+02:00", "2024-03-01T10:00:00Z")["correct"]
    assert not compare_values(s, "2024-03-01", "2024-03-02")["correct"]


def test_sets_and_ordered_lists():
    s = spec_of("tags")
    r = compare_values(s, ["Urgent", "paper"], ["paper", "urgent"])  # order and case ignored
    assert r == {"correct": True, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    r = compare_values(s, ["a", "b", "c"], ["a", "d"])  # P=1/2, R=1/3, F1=0.4
    assert (r["precision"], r["recall"]) == (0.5, pytest.approx(1 / 3)) and r["f1"] == pytest.approx(0.4)
    ordered = spec_of("tags", invoice_task({"tags": FieldEval(ordered=True)}))
    r = compare_values(ordered, ["a", "b", "c"], ["b", "a", "c"])  # LCS 2: P=R=2/3
    assert not r["correct"] and r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert compare_values(s, [], None)["correct"]  # a missing list reads as empty


def test_optional_null_vs_value():
    s = spec_of("note")
    assert compare_values(s, None, None) == {"correct": True, "token_f1": 1.0}
    assert compare_values(s, None, "x") == {"correct": False, "token_f1": 0.0}
    assert compare_values(s, "x", None)["correct"] is False


# ---- whole-object scoring ------------------------------------------------------------------------

def test_score_nested_lists_missing_keys_and_null_metrics():
    task = invoice_task()
    other = {**GOLD, "note": "call back", "address": {"city": "Boston", "zip": "02101"}}
    pred_a = {k: v for k, v in GOLD.items() if k != "note"}  # a missing optional key equals null: all correct
    pred_a["address"] = {"city": "new york"}  # zip missing → null; city matches after normalisation
    pred_b = {**other, "address": {"city": "Boston", "zip": None}, "note": None,
              "items": [{"name": "Pen", "unit_price": 1.5, "qty": 3}]}  # one item dropped, qty wrong, 1 null wrong
    answers = [json.dumps(pred_a), json.dumps(pred_b), "{not json", '["a list"]']
    report = scored(task, [GOLD, other, GOLD, GOLD], answers)
    m = report["metrics"]
    assert (m["json_valid"], m["schema_valid"], m["exact_match"]) == (0.75, 0.5, 0.25)
    assert m["field.kind"] == 0.5  # rows 3, 4 are not JSON objects
    # items[].qty pairs: row1 2 pairs ok, row2 (3 vs 2 wrong, missing element wrong), rows 3-4 2 pairs each wrong
    assert report["fields"]["items[].qty"]["n"] == 8 and m["field.items[].qty"] == 2 / 8
    assert m["field.items"] == 0.25  # only row 1's item list matches
    # note: gold null in rows 1,3,4 and "call back" in row 2; predicted null in rows 1 and 2
    assert m["field.note"] == 0.25
    assert m["field.note.null_precision"] == 0.5  # 2 predicted nulls, 1 right
    assert m["field.note.null_recall"] == pytest.approx(1 / 3)  # 3 gold nulls, 1 found
    assert m["field.address.zip.null_precision"] == 0.5
    row2 = report["rows"][1]
    assert set(row2["wrong"]) == {"items[0].qty", "items[1].name", "items[1].unit_price", "items[1].qty",
                                  "items", "note", "address.zip"}
    assert row2["wrong"]["items[0].qty"] == {"expected": 2, "got": 3}
    assert row2["wrong"]["items[1].name"]["missing"] is True
    assert report["rows"][2]["error"].startswith("not JSON")
    assert report["rows"][3]["error"] == "not a JSON object: list"


def test_confusion_matrix_and_invalid_values():
    class Pick(BaseModel):
        tool: Literal["a", "b", "c"]

    task = Task(name="pick", instructions="Pick.", output=Pick, examples=[Example("x", {"tool": "a"})])
    gold = [{"tool": "a"}, {"tool": "a"}, {"tool": "b"}, {"tool": "c"}]
    report = scored(task, gold, ['{"tool":"a"}', '{"tool":"b"}', '{"tool":"b"}', '{"tool":"zzz"}'])
    f = report["fields"]["tool"]
    assert f["confusion"] == {"a": {"a": 1, "b": 1}, "b": {"b": 1}, "c": {"(invalid)": 1}}
    assert f["labels"] == ["a", "b", "c", "(invalid)"]
    assert f["per_value"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert report["metrics"]["schema_valid"] == 0.75 and report["metrics"]["field.tool"] == 0.5


def test_latency_and_tokens_from_predictions():
    from schemabuild.evaluate import Answer

    class Pick(BaseModel):
        tool: Literal["a", "b"]

    task = Task(name="pick", instructions="Pick.", output=Pick, examples=[Example("x", {"tool": "a"})])
    answers = [Answer('{"tool":"a"}', latency_ms=10.0, prompt_tokens=20, completion_tokens=5),
               Answer('{"tool":"a"}', latency_ms=30.0, prompt_tokens=22, completion_tokens=7, finish_reason="stop")]
    report = scored(task, [{"tool": "a"}, {"tool": "b"}], answers)
    assert report["latency_ms"]["mean"] == 20.0 and report["latency_ms"]["p50"] == 20.0
    assert report["tokens"] == {"prompt_mean": 21.0, "completion_mean": 6.0, "prompt_total": 42, "completion_total": 12}
    assert report["finish_reasons"] == {"stop": 1}


# ---- gate ----------------------------------------------------------------------------------------

def test_parse_min_and_its_errors():
    assert parse_min(["json_valid=1.0", "field.tool = 0.9"]) == {"json_valid": 1.0, "field.tool": 0.9}
    for bad, needle in [("field.tool", "expected METRIC=VALUE"), ("field.tool=high", "is not a number"),
                        ("x=1.5", "between 0 and 1")]:
        with pytest.raises(ConfigError, match=needle) as exc:
            EvalConfig(min=[bad])
        assert str(exc.value).startswith("--min")
    with pytest.raises(ConfigError, match="--compare judge"):
        EvalConfig(compare=["judge"])


def test_check_gate_thresholds_unknown_metrics_and_regressions():
    metrics = {"json_valid": 1.0, "field.tool": 0.85, "field.query": 0.70, "field.query.null_recall": None}
    assert check_gate(metrics, {"json_valid": 1.0, "field.tool": 0.85}) == []
    fails = check_gate(metrics, {"field.tool": 0.9, "field.tol": 0.5})
    assert fails[0] == "FAIL field.tool = 0.850 < 0.9 (--min)"
    assert fails[1].startswith("FAIL --min field.tol=0.5: no such metric (known: json_valid, field.tool")
    old = {"json_valid": 1.0, "field.tool": 0.86, "field.query": 0.80}
    fails = check_gate(metrics, {}, baseline=old, tolerance=0.02, baseline_name="old/report.json")
    assert fails == ["FAIL field.query regressed 0.800 -> 0.700 (-0.100 > --tolerance 0.02) vs old/report.json"]
    assert check_gate(metrics, {}, baseline=old, tolerance=0.2) == []


# ---- reports -------------------------------------------------------------------------------------

def fake_report(tool_picker):
    from schemabuild.evaluate import Answer

    gold = [Example("play jazz", {"tool": "music.play", "query": "jazz"}),
            Example("thanks", {"tool": "no_tool", "query": None}),
            Example("weather in Oslo", {"tool": "weather.forecast", "query": "Oslo"})]
    model = score(tool_picker, gold, [
        Answer('{"tool":"music.play","query":"Jazz"}', latency_ms=12.0, prompt_tokens=90, completion_tokens=9),
        Answer('{"tool":"web.search","query":"thanks"}', latency_ms=15.0, prompt_tokens=88, completion_tokens=10),
        Answer('{"tool":"weather.forecast","query":"oslo"}', latency_ms=11.0, prompt_tokens=91, completion_tokens=9),
    ])
    base = score(tool_picker, gold, ['{"tool":"no_tool","query":null}'] * 3, "base")
    failures = check_gate(model["metrics"], {"field.tool": 0.9})
    return {"task": "tool_picker", "run": "r", "data": "d.jsonl", "n": 3, "created": "now", "out": "o",
            "metrics": model["metrics"], "models": {"finetuned": model, "base": base}, "notes": [],
            "gate": {"passed": not failures, "failures": failures, "min": {"field.tool": 0.9},
                     "baseline": None, "tolerance": 0.02}}


def test_reports_are_written_with_plots(tool_picker, tmp_path):
    report = fake_report(tool_picker)
    assert report["metrics"]["field.tool"] == pytest.approx(2 / 3)
    paths = write_reports(report, tmp_path / "eval")
    data = json.loads(paths["json"].read_text())
    assert data["metrics"]["field.query"] == pytest.approx(2 / 3)
    assert data["gate"]["failures"] == ["FAIL field.tool = 0.667 < 0.9 (--min)"]
    assert [r["i"] for r in data["models"]["finetuned"]["rows"]] == [1]  # only wrong rows kept in report.json
    assert len(paths["predictions"].read_text().splitlines()) == 6  # every row of both models
    md = paths["md"].read_text()
    assert "| field.tool | 0.667 | 0.333 |" in md
    assert "### Confusion `tool` (finetuned)" in md and "`tool`: expected \"no_tool\", got \"web.search\"" in md
    page = paths["html"].read_text()
    assert page.count("<svg") == 4  # bars, two confusion heatmaps (model, base), one latency histogram
    assert 'class="bars"' in page and 'class="confusion"' in page and 'class="histogram"' in page
    assert "<script" not in page and "src=" not in page  # stands alone
    summary = format_summary(report)
    assert re.search(r"field\.tool\s+0\.667\s+0\.333", summary)
    assert "FAIL field.tool = 0.667 < 0.9 (--min)" in summary


# ---- end to end on a trained tiny run (needs schemabuild.predictor) ------------------------------

def floor3(x: float) -> float:
    """A threshold the value surely reaches once printed with 3 decimals."""
    return math.floor(x * 1000) / 1000


def eval_cli(*args):
    from schemabuild.cli import main

    return CliRunner().invoke(main, ["eval", "tool_picker", *map(str, args)])


@pytest.fixture(scope="session")
def full_report(trained_run, tmp_path_factory):
    """`schemabuild eval` on the whole gold set of the trained run, comparing the untrained base."""
    out = tmp_path_factory.mktemp("eval")
    result = eval_cli("--run", trained_run, "--out", out, "--compare", "base", "--compare", "teacher")
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text()), out, result.output


@pytest.mark.slow
def test_eval_writes_reports_and_compares_with_the_base(full_report):
    report, out, output = full_report
    assert report["n"] == 56 and set(report["models"]) == {"finetuned", "base"}
    ft, base = report["models"]["finetuned"]["metrics"], report["models"]["base"]["metrics"]
    for metrics in (ft, base):  # every rate is a rate; validity implies parsing
        assert all(v is None or 0.0 <= v <= 1.0 for v in metrics.values())
        assert metrics["json_valid"] >= metrics["schema_valid"] >= metrics["exact_match"]
    assert report["models"]["base"]["source"].endswith("tiny_base")  # the untrained tiny model of the run
    assert ft["field.tool"] > base["field.tool"] + 0.2 and ft["exact_match"] > base["exact_match"]  # tuning helped
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 56 and {r["model"] for r in rows} == {"finetuned", "base"}
    wrong = sum(not r["exact"] for r in rows if r["model"] == "finetuned")
    assert len(report["models"]["finetuned"]["rows"]) == wrong  # report.json keeps the wrong rows with their diffs
    assert "teacher comparison skipped: no OPENAI_API_KEY / OPENAI_BASE_URL (offline)" in output
    assert report["models"]["finetuned"]["latency_ms"]["p50"] > 0
    assert report["models"]["finetuned"]["tokens"]["completion_mean"] > 0
    page = (out / "report.html").read_text()
    assert page.count('class="confusion"') == 2 and 'class="histogram"' in page and 'class="bars"' in page
    assert re.search(r"field\.tool\s+\d\.\d{3}\s+\d\.\d{3}", output)  # the terminal table, one column per model


@pytest.mark.slow
def test_gate_fails_with_one_line_per_missed_threshold(trained_run, full_report, tmp_path):
    report = full_report[0]
    missed = {k: v for k, v in report["metrics"].items() if k.count(".") <= 1 and v is not None and v < 0.99}
    assert missed, "the tiny model is perfect everywhere: pick another threshold"
    args = [a for k, v in missed.items() for a in ("--min", f"{k}={min(1.0, v + 0.01):.3f}")]
    result = eval_cli("--run", trained_run, "--out", tmp_path, *args)
    assert result.exit_code == 1
    fails = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert len(fails) == len(missed) and all("(--min)" in f for f in fails)
    ok = eval_cli("--run", trained_run, "--out", tmp_path, "--min", f"json_valid={floor3(report['metrics']['json_valid'])}",
                  "--min", f"field.tool={floor3(report['metrics']['field.tool'])}")
    assert ok.exit_code == 0 and "gate passed" in ok.output


@pytest.mark.slow
def test_regression_gate_against_a_baseline(trained_run, full_report, tmp_path):
    report = full_report[0]
    old = json.loads(json.dumps(report))
    old["metrics"]["field.tool"] = report["metrics"]["field.tool"] + 0.05
    baseline = tmp_path / "old" / "report.json"
    baseline.parent.mkdir()
    baseline.write_text(json.dumps(old))
    result = eval_cli("--run", trained_run, "--out", tmp_path / "new", "--baseline", baseline, "--tolerance", "0.02")
    assert result.exit_code == 1
    assert f"FAIL field.tool regressed {old['metrics']['field.tool']:.3f} -> {report['metrics']['field.tool']:.3f}" \
        in result.output
    loose = eval_cli("--run", trained_run, "--out", tmp_path / "new", "--baseline", baseline, "--tolerance", "0.1")
    assert loose.exit_code == 0, loose.output


@pytest.mark.slow
@pytest.mark.parametrize("args, needle", [
    (["--min", "field.tool"], "Error: --min 'field.tool': expected METRIC=VALUE"),
    (["--min", "field.tool=2"], "between 0 and 1"),
    (["--compare", "gpt"], "Error: --compare gpt: expected one of base, teacher"),
    (["--baseline", "nope/report.json"], "Error: --baseline nope/report.json: no such file"),
    (["--run", "nope"], "Error: --run nope: no such run directory"),
])
def test_user_mistakes_are_one_line(args, needle, trained_run):
    if "--run" not in args:
        args = ["--run", str(trained_run), *args]
    result = eval_cli(*args)
    assert result.exit_code != 0 and needle in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_unknown_metric_names_fail_the_gate(trained_run, tmp_path):
    result = eval_cli("--run", trained_run, "--out", tmp_path, "--limit", "4", "--min", "field.tol=0.5")
    assert result.exit_code == 1
    assert "FAIL --min field.tol=0.5: no such metric (known: json_valid, schema_valid, exact_match, field.tool" \
        in result.output


@pytest.mark.slow
def test_pytest_integration_passes_and_fails_against_a_trained_run(trained_run, full_report, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import TASKS

    tool = full_report[0]["metrics"]["field.tool"]
    valid = floor3(full_report[0]["metrics"]["json_valid"])
    assert tool < 1.0
    test_file = tmp_path / "test_gate.py"
    test_file.write_text(
        "from schemabuild.evaluate import assert_gate\n\n"
        f"RUN = {str(trained_run)!r}\n\n"
        "def test_reached():\n"
        f"    assert_gate('tool_picker', min={{'json_valid': {valid}, 'field.tool': {floor3(tool)}}}, run=RUN)\n\n"
        "def test_above_reach():\n"
        f"    assert_gate('tool_picker', min={{'field.tool': {min(1.0, tool + 0.01):.3f}}}, run=RUN)\n")
    env = {**os.environ, "SCHEMABUILD_TASKS": str(TASKS), "SCHEMABUILD_RUNS": str(tmp_path / "runs"),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 failed, 1 passed" in out
    assert "test_above_reach" in out and f"FAIL field.tool = {tool:.3f} < {min(1.0, tool + 0.01):.3g} (--min)" in out


@pytest.mark.slow
def test_evaluate_run_is_what_train_prints(trained_run, tool_picker):
    from schemabuild.evaluate import evaluate_run

    report = evaluate_run(tool_picker, trained_run, quiet=True, limit=8)
    assert report["n"] == 8 and (trained_run / "eval" / "report.md").is_file()
    assert "json_valid" in format_summary(report)


@pytest.mark.slow
def test_compare_teacher_scores_the_llm_teacher_beside_the_model(trained_run, fake_openai, tmp_path):
    """--compare teacher labels the gold inputs through the configured OpenAI-compatible teacher (a real loopback server)."""
    gold = [json.loads(x) for x in (EVALS / "tool_picker.jsonl").read_text().splitlines()[:8]]
    for row in gold[:6]:  # the teacher knows six answers; the other two get "{}" (schema-invalid)
        fake_openai.answers[row["input"]] = row["output"]
    result = eval_cli("--run", trained_run, "--out", tmp_path, "--limit", "8", "--compare", "teacher")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    teacher = report["models"]["teacher"]
    assert teacher["source"].startswith("openai:")
    assert teacher["metrics"]["json_valid"] == 1.0 and teacher["metrics"]["schema_valid"] == pytest.approx(6 / 8)
    assert teacher["metrics"]["exact_match"] == pytest.approx(6 / 8)
    assert fake_openai.counts["/v1/chat/completions"] == 8  # one labelling call per gold input
    ft, base = report["metrics"], report["models"]["base"]["metrics"]  # --compare teacher scores the base too
    expected = (ft["field.tool"] - base["field.tool"]) / (teacher["metrics"]["field.tool"] - base["field.tool"])
    assert ft["gap_closed.field.tool"] == pytest.approx(expected) and "gap_closed" in ft
    reached = min(1.0, max(0.0, floor3(ft["gap_closed"])))  # the teacher's labels are cached: no new calls
    gated = eval_cli("--run", trained_run, "--out", tmp_path / "g", "--limit", "8", "--compare", "teacher",
                     "--min", f"gap_closed={reached}")
    assert gated.exit_code == 0 and "gate passed" in gated.output and fake_openai.counts["/v1/chat/completions"] == 8


# ---- the teacher-relative gate --------------------------------------------------------------------------------

def test_gap_closed_per_field_and_overall():
    from schemabuild.evaluate.gate import gap_closed

    tuned = {"exact_match": 0.8, "field.tool": 0.9, "field.query": 0.7, "field.query.token_f1": 0.8}
    base = {"exact_match": 0.1, "field.tool": 0.5, "field.query": 0.7}
    teacher = {"exact_match": 0.9, "field.tool": 1.0, "field.query": 0.7}
    gap = gap_closed(tuned, base, teacher)
    assert gap["gap_closed.field.tool"] == pytest.approx(0.8)  # (0.9 - 0.5) / (1.0 - 0.5)
    assert gap["gap_closed.field.query"] == 1.0  # no gap to close, and the tuned model is at the teacher
    assert gap["gap_closed"] == pytest.approx((0.8 - 0.6) / (0.85 - 0.6))  # on the mean field accuracy
    assert "gap_closed.field.query.token_f1" not in gap
    assert gap_closed({"field.tool": 0.4}, {"field.tool": 0.5}, {"field.tool": 0.5})["gap_closed.field.tool"] == 0.0


def test_gap_closed_gate_needs_the_teacher():
    with pytest.raises(ConfigError, match="--min gap_closed: gap_closed is measured against the teacher; add --compare teacher"):
        EvalConfig(min=["gap_closed=0.95"])
    assert EvalConfig(compare=["teacher"], min=["gap_closed=0.95"]).compare == ["base", "teacher"]
    [fail] = check_gate({"field.tool": 1.0}, {"gap_closed": 0.95})
    assert fail == "FAIL --min gap_closed=0.95: the report has no teacher comparison (needs --compare teacher with a teacher configured, and the base)"
    assert check_gate({"gap_closed": 0.97}, {"gap_closed": 0.95}) == []
    assert check_gate({"gap_closed": 0.9}, {"gap_closed": 0.95}) == ["FAIL gap_closed = 0.900 < 0.95 (--min)"]
