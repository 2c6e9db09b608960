"""Settings of `schemabuild eval` (each field a CLI flag) and the `--min METRIC=VALUE` parser."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

from schemabuild.errors import ConfigError
from schemabuild.inference.forward import ENGINES
from schemabuild.inference.grammars import DEFAULT_BACKEND
from schemabuild.precision import PRECISIONS

COMPARE_WITH = ("base", "teacher")


@dataclasses.dataclass
class EvalConfig:
    """Settings of `schemabuild eval` (each field is a CLI flag)."""
    run: str | None = None
    """Run directory or run id [default: the task's latest run]."""
    data: Path | None = None
    """Gold set (JSONL of {"input", "output"} rows) [default: evals/<task>.jsonl beside the tasks folder]."""
    compare: list[str] = dataclasses.field(default_factory=list)
    """Also score `base` (the un-fine-tuned base model) or `teacher` (the synthesis teacher; the base is then scored
    too, and `gap_closed` = (tuned - base) / (teacher - base) is reported per field and overall) on the same rows."""
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
    grammar_backend: Literal["xgrammar", "llguidance"] = DEFAULT_BACKEND
    """Grammar engine for constrained decoding."""
    precision: str = "auto"
    """Weights the model is scored in: fp32, bf16, int8 or auto (what `serve` runs by default on this machine)."""
    engine: Literal["torch", "llamacpp"] = "torch"
    """Forward passes: torch (transformers, in --precision) or llamacpp (llama.cpp over the run's Q8_0 GGUF, written
    to <run>/gguf/ on first use; needs llama-cpp-python). The decoding (grammar, jump-forward, speculation) is ours on
    both; llamacpp's answers are Q8_0's, not fp32's."""

    def __post_init__(self) -> None:
        self.compare = list(self.compare or [])
        self.min = list(self.min or [])
        for name in self.compare:
            if name not in COMPARE_WITH:
                raise ConfigError(f"--compare {name}: expected one of {', '.join(COMPARE_WITH)}")
        self.thresholds = parse_min(self.min)
        gap = [k for k in self.thresholds if k.split(".")[0] == "gap_closed"]
        if gap and "teacher" not in self.compare:
            raise ConfigError(f"--min {gap[0]}: gap_closed is measured against the teacher; add --compare teacher")
        if "teacher" in self.compare and "base" not in self.compare:
            self.compare.insert(0, "base")  # gap_closed = (tuned - base) / (teacher - base) needs the base too
        if self.tolerance is None or not self.tolerance >= 0:
            raise ConfigError(f"--tolerance {self.tolerance}: must be >= 0")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit}: must be >= 1")
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine {self.engine}: expected one of {', '.join(ENGINES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision}: expected one of {', '.join(PRECISIONS)}")
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

