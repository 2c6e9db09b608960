"""Bad task files and names: `schemabuild synth` answers with one line naming the file, line, example or field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from schemabuild.cli import main

HEADER = """from typing import Literal, Optional
from pydantic import BaseModel
from schemabuild import Example, Task


class Out(BaseModel):
    label: Literal["yes", "no"]
    note: Optional[str]

"""

GOOD_TASK = HEADER + """
task = Task(name="{name}", instructions="Say yes or no.", output=Out,
            examples=[Example("is the sky blue", Out(label="yes", note=None))])
"""

H = len(HEADER.splitlines())  # the cases' own lines start after the header

CASES = {
    "syntax_error": (HEADER + "task = Task(name='syntax_error',\n    instructions='x'\n    output=Out)\n",
                     rf"syntax_error.py:{H + 2}: syntax error"),
    "bad_example": (HEADER + """task = Task(name="bad_example", instructions="x", output=Out, examples=[
    Example("fine", {"label": "yes", "note": None}),
    Example("broken", {"label": "maybe", "note": None}),
])
""", r"examples\[1\]: field 'label': Input should be 'yes' or 'no'"),
    "missing_field": (HEADER + """task = Task(name="missing_field", instructions="x", output=Out,
            examples=[Example("hm", {"label": "no"})])
""", r"examples\[0\]: field 'note': Field required"),
    "no_task": (HEADER + "tasks = []\n", r"no_task.py: define `task = Task\(...\)` at module level"),
    "wrong_name": (GOOD_TASK.format(name="other_name"), r"task name 'other_name' does not match the file name 'wrong_name'"),
    "raises": (HEADER + "x = 1\nundefined_thing()\n", rf"raises.py:{H + 2}: NameError: name 'undefined_thing' is not defined"),
}


def run_synth(tmp_path: Path, name: str):
    return CliRunner().invoke(main, ["synth", name, "--tasks-dir", str(tmp_path / "tasks"),
                                     "--runs-dir", str(tmp_path / "runs"), "--n", "20"])


def assert_one_line_error(result, pattern: str) -> str:
    import re

    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_task_file_is_a_one_line_error(tmp_path, name):
    source, pattern = CASES[name]
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / f"{name}.py").write_text(source)
    line = assert_one_line_error(run_synth(tmp_path, name), pattern)
    assert f"{name}.py" in line  # always names the file
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_bad_task_name(tmp_path):
    assert_one_line_error(run_synth(tmp_path, "Bad-Name"), r"invalid task name 'Bad-Name'")


def test_missing_task_file_lists_known_tasks(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "known_one.py").write_text(GOOD_TASK.format(name="known_one"))
    assert_one_line_error(run_synth(tmp_path, "nothere"), r"no task file .*nothere.py .*known_one.*schemabuild init nothere")


def test_good_task_file_in_tasks_dir_synthesizes(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "yesno.py").write_text(GOOD_TASK.format(name="yesno"))
    result = run_synth(tmp_path, "yesno")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "yesno" / "latest" / "data" / "train.jsonl").is_file()


def test_synth_subprocess_exit_code_and_stderr(tmp_path):
    """The installed console entry point (not just CliRunner) exits non-zero with the one line on stderr."""
    import subprocess
    import sys

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "no_task.py").write_text(CASES["no_task"][0])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "schemabuild", "synth", "no_task", "--tasks-dir", str(tmp_path / "tasks")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("Error: ") and len(proc.stderr.strip().splitlines()) == 1
