"""Declare a task: instructions, a Pydantic output model, examples, hints; load task files by name."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from schemabuild.errors import TaskError  # noqa: F401 - re-exported: `from schemabuild.task import TaskError`

NAME_RE = re.compile(r"^[a-z0-9_]+$")


@dataclasses.dataclass
class Example:
    """One hand-written example: the input text and the output the model should give."""

    input: str
    """The user message, exactly as the model will see it."""
    output: Any
    """The expected output: an instance of the task's output model or a dict it validates."""


@dataclasses.dataclass
class FieldEval:
    """Per-field evaluation settings a task file may give (see `schemabuild.evaluate`)."""

    comparator: str | None = None
    """One of: exact, float, string, date, set, list; None chooses from the field's type."""
    tolerance: float | None = None
    """Relative tolerance for float fields."""
    ordered: bool = False
    """For list fields: compare in order rather than as sets."""


@dataclasses.dataclass
class Task:
    """A task: what `tasks/<name>.py` declares as `task = Task(...)`."""

    name: str
    """Lowercase letters, digits and underscores; also the model name the server answers to."""
    instructions: str
    """What the task is, for the teacher (and un-tuned bases): tools, labels, rules, the output's meaning."""
    output: type[BaseModel]
    """The Pydantic model every output must validate against."""
    examples: list[Example]
    """A handful of hand-written examples (validated against `output` when the file loads)."""
    hints: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Lists that steer input diversity, e.g. {"personas": [...], "topics": [...], "styles": [...]}."""
    validators: list[Callable[[str, BaseModel], None]] = dataclasses.field(default_factory=list)
    """Extra checks on synthesized pairs: `fn(input_text, output)` raises ValueError to reject the pair."""
    fields: dict[str, FieldEval] = dataclasses.field(default_factory=dict)
    """Per-field evaluation overrides keyed by dotted path (`items[].unit_price`)."""
    source: Path | None = None
    """The file the task was loaded from (set by `load_task`)."""
    student_prompt: str | None = None
    """The short system line the fine-tuned model is trained and served with [default: "Task: <name>. Reply with
    the JSON only."]. The model learns the task from the data, so it does not need the instructions every time."""

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise TaskError(f"{where}: name must match [a-z0-9_]+")
        if not (isinstance(self.output, type) and issubclass(self.output, BaseModel)):
            raise TaskError(f"{where}: output must be a pydantic.BaseModel subclass, got {self.output!r}")
        if not isinstance(self.instructions, str) or not self.instructions.strip():
            raise TaskError(f"{where}: instructions must be a non-empty string")
        if not self.examples:
            raise TaskError(f"{where}: give at least one Example")
        if self.student_prompt is not None and (not isinstance(self.student_prompt, str) or not self.student_prompt.strip()):
            raise TaskError(f"{where}: student_prompt must be a non-empty string (or left out)")
        for key, values in self.hints.items():
            if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
                raise TaskError(f"{where}: hints[{key!r}] must be a list of strings")
        checked = []
        for i, ex in enumerate(self.examples):
            if not isinstance(ex, Example):
                raise TaskError(f"{where}: examples[{i}] must be an Example, got {type(ex).__name__}")
            if not isinstance(ex.input, str) or not ex.input.strip():
                raise TaskError(f"{where}: examples[{i}].input must be a non-empty string")
            checked.append(Example(ex.input, self.validate_output(ex.output, f"examples[{i}]")))
        self.examples = checked

    def validate_output(self, value: Any, label: str = "output") -> BaseModel:
        """Validate `value` (model instance, dict or JSON string) against the output model; TaskError names the field."""
        try:
            if isinstance(value, self.output):
                return self.output.model_validate(value.model_dump())
            if isinstance(value, (str, bytes)):
                return self.output.model_validate_json(value)
            return self.output.model_validate(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
            raise TaskError(f"task {self.name!r}: {label}: field {loc!r}: {err['msg']}") from None

    def json_schema(self) -> dict:
        return self.output.model_json_schema()

    def fingerprint(self) -> dict[str, str]:
        """Content hashes that say when a dataset or model is stale for this task."""
        schema = json.dumps(self.json_schema(), sort_keys=True)
        examples = json.dumps([[e.input, e.output.model_dump(mode="json")] for e in self.examples], sort_keys=True)
        out = {
            "schema": _sha(schema),
            "examples": _sha(examples),
            "instructions": _sha(self.instructions),
            "hints": _sha(json.dumps(self.hints, sort_keys=True)),
        }
        if self.source is not None and self.source.exists():
            out["task_file"] = _sha(self.source.read_text())
        return out


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tasks_dir(explicit: str | os.PathLike | None = None) -> Path:
    """`--tasks-dir`, else $SCHEMABUILD_TASKS, else ./tasks."""
    return Path(explicit or os.environ.get("SCHEMABUILD_TASKS") or "tasks")


def list_tasks(directory: str | os.PathLike | None = None) -> list[str]:
    d = tasks_dir(directory)
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.py") if NAME_RE.match(p.stem))


def load_task(name: str, directory: str | os.PathLike | None = None) -> Task:
    """Import `<tasks_dir>/<name>.py` and return its `task`; every failure is a one-line TaskError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TaskError(f"invalid task name {name!r}: use lowercase letters, digits and underscores")
    d = tasks_dir(directory)
    path = d / f"{name}.py"
    if not path.is_file():
        known = ", ".join(list_tasks(d)) or "none"
        raise TaskError(f"no task file {path} (tasks in {d}: {known}); create one with `schemabuild init {name}`")
    try:
        source = path.read_text()
        compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise TaskError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    spec = importlib.util.spec_from_file_location(f"schemabuild_tasks.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except TaskError as exc:
        raise TaskError(f"{path}: {exc}") from None
    except Exception as exc:  # the user's file raised: name the file and the line
        tb = exc.__traceback__
        line = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == str(path):
                line = tb.tb_lineno
            tb = tb.tb_next
        where = f"{path}:{line}" if line else str(path)
        raise TaskError(f"{where}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    task = getattr(module, "task", None)
    if not isinstance(task, Task):
        raise TaskError(f"{path}: define `task = Task(...)` at module level")
    if task.name != name:
        raise TaskError(f"{path}: task name {task.name!r} does not match the file name {name!r}")
    task.source = path
    return task


def load_jsonl_examples(task: Task, path: str | os.PathLike) -> list[Example]:
    """Read a gold/eval JSONL file of {"input": ..., "output": {...}} rows, validating each."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"no eval file {path}")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path}:{lineno}: not JSON: {exc.msg}") from None
        if not isinstance(row, dict) or "input" not in row or "output" not in row:
            raise TaskError(f"{path}:{lineno}: each row needs 'input' and 'output'")
        rows.append(Example(row["input"], task.validate_output(row["output"], f"{path.name}:{lineno}")))
    if not rows:
        raise TaskError(f"{path}: no rows")
    return rows


TEMPLATE = '''"""Task {name}: edit the instructions, the output model and the examples, then `schemabuild train {name}`."""

from typing import Literal, Optional

from pydantic import BaseModel, Field

from schemabuild import Example, Task


class Output(BaseModel):
    """What the model must answer. Every field is scored in `schemabuild eval` by its type."""

    label: Literal["positive", "negative", "neutral"] = Field(description="The overall sentiment.")
    subject: Optional[str] = Field(description="What the text is about, copied from the text, or null.")


task = Task(
    name="{name}",
    # The system prompt: the model is trained and served with exactly this text.
    instructions="Classify the sentiment of the message and name its subject. Answer with JSON only.",
    output=Output,
    # A handful of varied examples; each is validated against Output when this file loads.
    examples=[
        Example("I love the new keyboard, it types like a dream", Output(label="positive", subject="the new keyboard")),
        Example("the train was late again", Output(label="negative", subject="the train")),
        Example("ok", Output(label="neutral", subject=None)),
    ],
    # Optional lists that steer the variety of synthesized inputs.
    hints={{"personas": ["a busy parent", "a student"], "styles": ["terse", "chatty"]}},
)
'''


def write_template(name: str, directory: str | os.PathLike | None = None, force: bool = False) -> Path:
    if not NAME_RE.match(name):
        raise TaskError(f"invalid task name {name!r}: use lowercase letters, digits and underscores")
    d = tasks_dir(directory)
    path = d / f"{name}.py"
    if path.exists() and not force:
        raise TaskError(f"{path} exists; pass --force to overwrite")
    d.mkdir(parents=True, exist_ok=True)
    path.write_text(TEMPLATE.format(name=name))
    return path


def describe(task: Task) -> str:
    doc = inspect.getdoc(task.output) or ""
    return f"{task.name}: {len(task.examples)} examples, output {task.output.__name__}" + (f" ({doc.splitlines()[0]})" if doc else "")
