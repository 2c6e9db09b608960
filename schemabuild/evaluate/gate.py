"""The CI gate: one line per metric under its `--min` or dropped from the `--baseline` by more than `--tolerance`."""

from __future__ import annotations


from schemabuild.evaluate.compare import is_number

GAP = "gap_closed"
"""The teacher-relative metric: (tuned - base) / (teacher - base), overall and per field (`gap_closed.field.tool`)."""


def _mean_fields(metrics: dict) -> float | None:
    values = [v for k, v in metrics.items() if k.startswith("field.") and k.count(".") == 1 and v is not None]
    return sum(values) / len(values) if values else None


def gap_closed(tuned: dict, base: dict, teacher: dict) -> dict[str, float | None]:
    """How much of the base-to-teacher gap the tuned model closed, from three models' metrics: `gap_closed` on the
    mean field accuracy, `gap_closed.field.<path>` per field. 1.0 = as good as the teacher (above 1: better). Where
    the teacher is no better than the base there is no gap: 1.0 when the tuned model reaches the teacher, else 0.0."""
    out: dict[str, float | None] = {}
    pairs = [(GAP, _mean_fields(tuned), _mean_fields(base), _mean_fields(teacher))]
    pairs += [(f"{GAP}.{k}", v, base.get(k), teacher.get(k)) for k, v in tuned.items()
              if k.startswith("field.") and k.count(".") == 1]
    for name, t, b, te in pairs:
        if not (is_number(t) and is_number(b) and is_number(te)):
            out[name] = None
        elif te - b <= 1e-9:
            out[name] = 1.0 if t >= te - 1e-9 else 0.0
        else:
            out[name] = (t - b) / (te - b)
    return out

def check_gate(metrics: dict, thresholds: dict[str, float], baseline: dict | None = None,
               tolerance: float = 0.02, baseline_name: str = "baseline") -> list[str]:
    """One line per failure: a metric below its --min, or one that dropped more than `tolerance` vs the baseline."""
    failures = []
    for name, threshold in thresholds.items():
        if name not in metrics and name.split(".")[0] == GAP:
            failures.append(f"FAIL --min {name}={threshold:g}: the report has no teacher comparison "
                            f"(needs --compare teacher with a teacher configured, and the base)")
            continue
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
        if not (is_number(old) and is_number(new)):
            continue
        if old - new > tolerance + 1e-12:
            failures.append(f"FAIL {name} regressed {old:.3f} -> {new:.3f} "
                            f"(-{old - new:.3f} > --tolerance {tolerance:g}) vs {baseline_name}")
    return failures

