"""Evaluation: per-field accuracy derived from the output schema, reports (json, md, html) and a CI gate.

    settings   EvalConfig, --min parsing
    fields     schema → field specs          compare   one field's comparator
    scoring    answers → one model's section report    the typed Report
    gate       thresholds and baselines      markdown / html   the rendered reports
    stage      `evaluate`: setup → predict → score → save → gate; `assert_gate` for pytest
"""

from schemabuild.evaluate.compare import MISSING, UNPARSED, compare_values, field_pairs, normalize_date, normalize_text, token_f1, value_label
from schemabuild.evaluate.fields import COMPARATORS, FieldSpec, field_specs
from schemabuild.evaluate.gate import check_gate
from schemabuild.evaluate.html import render_html, svg_bars, svg_confusion, svg_histogram
from schemabuild.evaluate.markdown import format_summary, render_markdown
from schemabuild.evaluate.report import Report, primary
from schemabuild.evaluate.scoring import PRIMARY, Answer, as_answer, score
from schemabuild.evaluate.settings import COMPARE_WITH, EvalConfig, parse_min
from schemabuild.evaluate.stage import ValScorer, assert_gate, evaluate, evaluate_run, load_rows, run_eval, val_scorer, write_reports

__all__ = ["COMPARATORS", "COMPARE_WITH", "MISSING", "PRIMARY", "UNPARSED", "Answer", "EvalConfig", "FieldSpec", "Report", "ValScorer",
           "as_answer", "assert_gate", "check_gate", "compare_values", "evaluate", "evaluate_run", "field_pairs",
           "field_specs", "format_summary", "load_rows", "normalize_date", "normalize_text", "parse_min", "primary",
           "render_html", "render_markdown", "run_eval", "score", "svg_bars", "svg_confusion", "svg_histogram",
           "token_f1", "val_scorer", "value_label", "write_reports"]
