"""The eval report's shape: what `evaluate` returns and report.json holds, typed for the code that reads it
(the renderers, refine, the train command's summary)."""

from __future__ import annotations

from typing import Any, TypedDict

from schemabuild.evaluate.scoring import PRIMARY


class FieldReport(TypedDict, total=False):
    """One field of one model: `accuracy` over `n` values, plus its comparator's extras."""

    comparator: str
    optional: bool
    n: int
    accuracy: float | None
    token_f1: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    null_precision: float | None
    null_recall: float | None
    labels: list[str]
    """Enum-like fields: the confusion matrix's labels, gold values first."""
    confusion: dict[str, dict[str, int]]
    """Enum-like fields: gold label → predicted label → count."""
    per_value: dict[str, float | None]
    """Enum-like fields: recall of each gold value."""


class ModelReport(TypedDict):
    """One model's section (`score`'s result): metrics by name, fields by path, timing, every row."""

    name: str
    source: str
    n: int
    metrics: dict[str, float | None]
    fields: dict[str, FieldReport]
    latency_ms: dict[str, Any] | None
    tokens: dict[str, Any] | None
    finish_reasons: dict[str, int]
    rows: list[dict[str, Any]]


class Gate(TypedDict):
    passed: bool
    failures: list[str]
    min: dict[str, float]
    baseline: str | None
    tolerance: float


class Report(TypedDict, total=False):
    """What `evaluate` returns: `models[PRIMARY]` is the fine-tuned model; `skipped` alone when nothing was scored."""

    task: str
    run: str
    data: str
    n: int
    created: str
    metrics: dict[str, float | None]
    models: dict[str, ModelReport]
    gate: Gate
    notes: list[str]
    out: str
    training: dict[str, Any]
    """The run's training curve (loss per logging step, validation accuracy per field per measurement)."""
    skipped: str


def primary(report: Report) -> ModelReport:
    """The fine-tuned model's section."""
    return report["models"][PRIMARY]
