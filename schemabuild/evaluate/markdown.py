"""The terminal summary and report.md."""

from __future__ import annotations

import html
import json
from typing import Any


from schemabuild.evaluate.scoring import PRIMARY

def fmt_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def metric_names(report: dict) -> list[str]:
    names: list[str] = []
    for m in report["models"].values():
        for k in m["metrics"]:
            if k not in names:
                names.append(k)
    return names


def format_summary(report: dict) -> str:
    """The terminal table: one row per metric, one column per model; gate failures and report paths after."""
    if report.get("skipped"):
        return report["skipped"]
    models = list(report["models"])
    names = metric_names(report)
    width = max(len(n) for n in names + ["metric"]) + 2
    lines = [f"eval {report['task']}: {report['n']} rows from {report['data']}"]
    lines.append("metric".ljust(width) + "".join(m.rjust(10) for m in models))
    lines.append("-" * (width + 10 * len(models)))
    for name in names:
        lines.append(name.ljust(width) + "".join(fmt_value(report["models"][m]["metrics"].get(name)).rjust(10) for m in models))
    lat = report["models"][PRIMARY].get("latency_ms")
    if lat:
        lines.append(f"latency ms: mean {lat['mean']:.1f}, p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}")
    for note in report.get("notes", []):
        lines.append(note)
    gate = report["gate"]
    if gate["min"] or gate["baseline"]:
        lines += gate["failures"] or ["gate passed"]
    lines.append(f"reports: {report.get('out')}/report.md, report.html, report.json")
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt_value(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def render_markdown(report: dict) -> str:
    """report.md: metrics per model, per-field details, confusion matrices, gate, wrong examples."""
    models = list(report["models"])
    parts = [f"# Eval report: {report['task']}", "",
             f"Run `{report['run']}`, {report['n']} rows from `{report['data']}`, {report['created']}.", ""]
    for note in report.get("notes", []):
        parts.append(f"- {note}")
    gate = report["gate"]
    parts += ["", "## Gate", ""]
    if gate["min"] or gate["baseline"]:
        parts.append("**passed**" if gate["passed"] else "**failed**")
        parts += [f"- `{f}`" for f in gate["failures"]]
    else:
        parts.append("No thresholds set (`--min`, `--baseline`).")
    parts += ["", "## Metrics", "", _md_table(["metric"] + models,
                                               [[n] + [report["models"][m]["metrics"].get(n) for m in models]
                                                for n in metric_names(report)])]
    primary = report["models"][PRIMARY]
    parts += ["", "## Fields", "", _md_table(
        ["field", "comparator", "n", "accuracy", "token F1 / F1", "null P", "null R"],
        [[p, f["comparator"], f["n"], f["accuracy"], f.get("token_f1", f.get("f1")), f.get("null_precision"),
          f.get("null_recall")] for p, f in primary["fields"].items()])]
    for m in models:
        for path, f in report["models"][m]["fields"].items():
            if "confusion" not in f:
                continue
            labels = f["labels"]
            parts += ["", f"### Confusion `{path}` ({m}): rows gold, columns predicted", "",
                      _md_table(["gold \\ pred"] + labels,
                                [[g] + [f["confusion"].get(g, {}).get(p, 0) for p in labels] for g in labels
                                 if g in f["confusion"]])]
    for m in models:
        sec = report["models"][m]
        if sec.get("latency_ms") or sec.get("tokens"):
            lat, tok = sec.get("latency_ms") or {}, sec.get("tokens") or {}
            parts += ["", f"## Latency and tokens ({m})", "",
                      _md_table(["mean ms", "p50 ms", "p90 ms", "max ms", "prompt tokens (mean)", "completion tokens (mean)"],
                                [[lat.get("mean"), lat.get("p50"), lat.get("p90"), lat.get("max"),
                                  tok.get("prompt_mean"), tok.get("completion_mean")]])]
    wrong = [r for r in primary["rows"] if not r["exact"]]
    parts += ["", f"## Wrong answers ({len(wrong)} of {primary['n']}, {PRIMARY})", ""]
    for r in wrong[:50]:
        what = r["error"] or "; ".join(f"`{k}`: expected {json.dumps(v['expected'], ensure_ascii=False)}, "
                                       f"got {json.dumps(v['got'], ensure_ascii=False)}" for k, v in r["wrong"].items())
        parts.append(f"- #{r['i']} {json.dumps(r['input'], ensure_ascii=False)}: {what}")
    if len(wrong) > 50:
        parts.append(f"- ... {len(wrong) - 50} more in predictions.jsonl")
    return "\n".join(parts) + "\n"

