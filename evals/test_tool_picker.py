"""The tool_picker eval gates: CI fails when the model scores below these floors on the gold set
(evals/tool_picker.jsonl, 56 rows), the second dev set (evals/dev/tool_picker.jsonl, 64 rows written in another
style: typos, long messages, shouting, loanwords) or the third, holdout set (evals/holdout/tool_picker.jsonl, 64 rows
written before any model output was seen and never tuned on).

Run them alone with `pytest evals/`, or the same gate from the shell:
    schemabuild eval tool_picker --min json_valid=1.0 --min schema_valid=1.0 --min field.tool=0.96
    schemabuild eval tool_picker --data evals/dev/tool_picker.jsonl --out <run>/eval_dev --min field.tool=0.85
The gate's model is retrained first when the code, settings or data that made the latest run differ from now
(evals/conftest.py, `ensure_run`).
"""

from pathlib import Path

import pytest

from schemabuild.evaluate import assert_gate

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tasks"

# Floors about one row under what the gate's own model scored (seed 0, `schemabuild train tool_picker` with this
# session's defaults: the schema-aware offline generator, measured training length; BENCHMARKS.md "Session 4: the
# merged defaults on the three sets", printed by `python bench/main_job.py --summarize runs/tool_picker/latest`):
# gold tool 0.982 / query F1 0.940 / null recall 0.857 (6 of 7 nulls); dev 0.875 / 0.881 / 0.75 (6 of 8);
# holdout 0.938 / 0.872 / 0.625 (5 of 8). One seed only: floors sit one row under it for CPU-thread nondeterminism.
# The null-recall floors are low because the new generator answers fewer no_tool messages with null than the old one
# (gold/dev 0.857/1.00 before); that regression is open (issue 15), not hidden: the floors only stop it getting worse.
MIN = {"json_valid": 1.0, "schema_valid": 1.0, "field.tool": 0.96, "field.query.token_f1": 0.9,
       "field.query.null_recall": 0.7}
MIN_DEV = {"json_valid": 1.0, "schema_valid": 1.0, "field.tool": 0.85, "field.query.token_f1": 0.85,
           "field.query.null_recall": 0.62}
# The holdout set (written before any output was seen, never tuned on): floors set after the fact, as above.
MIN_HOLDOUT = {"json_valid": 1.0, "schema_valid": 1.0, "field.tool": 0.92, "field.query.token_f1": 0.84,
               "field.query.null_recall": 0.5}


@pytest.mark.slow  # trains a model when ./runs has no fresh one
def test_tool_picker_gate(tool_picker_run):
    report = assert_gate("tool_picker", min=MIN, run=tool_picker_run, tasks_dir=TASKS)
    assert (tool_picker_run / "eval" / "report.html").is_file()
    assert report["n"] == 56


@pytest.mark.slow
def test_tool_picker_dev_set_gate(tool_picker_run):
    report = assert_gate("tool_picker", min=MIN_DEV, run=tool_picker_run, tasks_dir=TASKS,
                         data=ROOT / "evals" / "dev" / "tool_picker.jsonl", out=tool_picker_run / "eval_dev")
    assert report["n"] == 64 and (tool_picker_run / "eval_dev" / "report.json").is_file()


@pytest.mark.slow
def test_tool_picker_holdout_set_gate(tool_picker_run):
    report = assert_gate("tool_picker", min=MIN_HOLDOUT, run=tool_picker_run, tasks_dir=TASKS,
                         data=ROOT / "evals" / "holdout" / "tool_picker.jsonl", out=tool_picker_run / "eval_holdout")
    assert report["n"] == 64 and (tool_picker_run / "eval_holdout" / "report.json").is_file()
