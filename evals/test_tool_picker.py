"""The tool_picker eval gates: CI fails when the model scores below these floors on the gold set
(evals/tool_picker.jsonl, 56 rows) or on the second dev set (evals/dev/tool_picker.jsonl, 64 rows written in
another style: typos, long messages, shouting, loanwords).

Run them alone with `pytest evals/`, or the same gate from the shell:
    schemabuild eval tool_picker --min json_valid=1.0 --min schema_valid=1.0 --min field.tool=0.9
    schemabuild eval tool_picker --data evals/dev/tool_picker.jsonl --out <run>/eval_dev --min field.tool=0.8
"""

from pathlib import Path

import pytest

from schemabuild.evaluate import assert_gate

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tasks"

# Floors under what `schemabuild train tool_picker` (offline teacher, SmolLM2-135M LoRA, the defaults) scored in
# BENCHMARKS.md "Real base": the worst of seeds 0-2, less a margin for CPU-thread nondeterminism.
MIN = {"json_valid": 1.0, "schema_valid": 1.0, "field.tool": 0.9, "field.query.token_f1": 0.85}
MIN_DEV = {"json_valid": 1.0, "schema_valid": 1.0, "field.tool": 0.8, "field.query.token_f1": 0.65}


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
