"""The CI gate: one line per metric under its `--min` or dropped from the `--baseline` by more than `--tolerance`."""

from __future__ import annotations


from schemabuild.evaluate.compare import is_number

def check_gate(metrics: dict, thresholds: dict[str, float], baseline: dict | None = None,
               tolerance: float = 0.02, baseline_name: str = "baseline") -> list[str]:
    """One line per failure: a metric below its --min, or one that dropped more than `tolerance` vs the baseline."""
    failures = []
    for name, threshold in thresholds.items():
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

