"""The tool_picker eval gate: CI fails when the model scores below these thresholds on evals/tool_picker.jsonl.

Run it alone with `pytest evals/`, or the same gate from the shell:
    schemabuild eval tool_picker --min json_valid=1.0 --min schema_valid=1.0 --min field.tool=0.7
"""

from pathlib import Path

from schemabuild.evaluate import assert_gate

TASKS = Path(__file__).resolve().parents[1] / "tasks"

# Floors the offline-trained tiny model clears on the 56 gold rows (BENCHMARKS.md, "## Accuracy"). Measured
# 2026-11-21 after invented slot fills in the offline teacher and 8 tiny epochs: json_valid 1.000, schema_valid
# 1.000, field.tool 0.80-0.82 with this gate's n=400 (seeds 0-1) and 0.84-0.91 with the default n=1000 (seeds
# 0-2); the floor leaves room for that seed-to-seed spread. Raise it when training on a real base model.
MIN = {"json_valid": 1.0, "schema_valid": 1.0, "field.tool": 0.7}


def test_tool_picker_gate(tool_picker_run):
    report = assert_gate("tool_picker", min=MIN, run=tool_picker_run, tasks_dir=TASKS)
    assert (tool_picker_run / "eval" / "report.html").is_file()
    assert report["n"] == 56
