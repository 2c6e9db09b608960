"""report.html: a standalone page with inline SVG plots (accuracy bars, confusion heatmaps, latency histogram)."""

from __future__ import annotations

import enum
import html
import json


from schemabuild.evaluate.markdown import fmt_value, metric_names
from schemabuild.evaluate.scoring import PRIMARY

PALETTE = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6"]


def svg_bars(report: dict) -> str:
    """Horizontal grouped bars: accuracy-like metrics (rates) per model."""
    models = list(report["models"])
    names = ["json_valid", "schema_valid", "exact_match"] + [f"field.{p}" for p in report["models"][PRIMARY]["fields"]]
    bar_h, gap, left, width = 12, 10, 220, 360
    group_h = bar_h * len(models) + gap
    height = group_h * len(names) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="bars" width="{left + width + 60}" height="{height}" '
           f'role="img" aria-label="accuracy per field and model">']
    for j, m in enumerate(models):
        out.append(f'<rect x="{left + j * 110}" y="4" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
                   f'<text x="{left + j * 110 + 14}" y="13" font-size="11">{html.escape(m)}</text>')
    for i, name in enumerate(names):
        y0 = 26 + i * group_h
        out.append(f'<text x="{left - 6}" y="{y0 + group_h / 2}" font-size="11" text-anchor="end">{html.escape(name)}</text>')
        for j, m in enumerate(models):
            v = report["models"][m]["metrics"].get(name)
            w = 0 if v is None else max(0.0, min(1.0, v)) * width
            y = y0 + j * bar_h
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{PALETTE[j % len(PALETTE)]}">'
                       f'<title>{html.escape(m)} {html.escape(name)} {fmt_value(v)}</title></rect>'
                       f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 3}" font-size="9">{fmt_value(v)}</text>')
    out.append(f'<line x1="{left}" y1="20" x2="{left}" y2="{height}" stroke="#999"/>')
    out.append("</svg>")
    return "".join(out)


def svg_confusion(field: dict, title: str) -> str:
    """A heatmap of an enum field's confusion matrix (rows gold, columns predicted), colour by row share."""
    labels = field["labels"]
    conf = field["confusion"]
    cell, left, top = 28, 170, 150
    size_w, size_h = left + cell * len(labels) + 10, top + cell * len(labels) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="confusion" width="{size_w}" height="{size_h}" '
           f'role="img" aria-label="{html.escape(title)}">']
    for j, p in enumerate(labels):
        x = left + j * cell + cell / 2
        out.append(f'<text transform="translate({x},{top - 6}) rotate(-60)" font-size="10">{html.escape(p)}</text>')
    for i, g in enumerate(labels):
        row = conf.get(g, {})
        total = sum(row.values())
        y = top + i * cell
        out.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4}" font-size="10" text-anchor="end">{html.escape(g)}</text>')
        for j, p in enumerate(labels):
            count = row.get(p, 0)
            share = count / total if total else 0.0
            color = f"rgba(37,99,235,{share:.3f})" if g == p else f"rgba(239,68,68,{share:.3f})"
            out.append(f'<rect x="{left + j * cell}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{color}" '
                       f'stroke="#ddd"><title>gold {html.escape(g)}, predicted {html.escape(p)}: {count}</title></rect>')
            if count:
                out.append(f'<text x="{left + j * cell + cell / 2}" y="{y + cell / 2 + 4}" font-size="10" '
                           f'text-anchor="middle">{count}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_histogram(values: list[float], title: str, bins: int = 20) -> str:
    """A latency histogram."""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / span * bins))] += 1
    w, h, left, bottom = 400, 140, 30, 30
    bw = w / bins
    top = max(counts) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="histogram" width="{w + left + 10}" height="{h + bottom + 10}" '
           f'role="img" aria-label="{html.escape(title)}">']
    for i, c in enumerate(counts):
        bh = c / top * h
        out.append(f'<rect x="{left + i * bw:.1f}" y="{10 + h - bh:.1f}" width="{bw - 1:.1f}" height="{bh:.1f}" '
                   f'fill="#2563eb"><title>{lo + i * span / bins:.1f}-{lo + (i + 1) * span / bins:.1f} ms: {c}</title></rect>')
    out.append(f'<text x="{left}" y="{h + 24}" font-size="10">{lo:.1f} ms</text>'
               f'<text x="{left + w}" y="{h + 24}" font-size="10" text-anchor="end">{hi:.1f} ms</text>'
               f'<text x="{left - 4}" y="18" font-size="10" text-anchor="end">{top}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_lines(series: dict[str, list], title: str, y_max: float | None = None, mark_x: float | None = None) -> str:
    """A line chart of named [(x, y), ...] series on shared axes (y from 0 to `y_max`, else the largest y)."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return ""
    w, h, left, bottom, top = 420, 150, 40, 24, 22
    x_hi = max(x for x, _ in points) or 1
    y_hi = y_max if y_max is not None else (max(y for _, y in points) or 1)
    def xy(x, y):
        return left + x / x_hi * w, top + h - min(max(y, 0), y_hi) / y_hi * h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="curve" width="{w + left + 110}" height="{h + top + bottom}" '
           f'role="img" aria-label="{html.escape(title)}">',
           f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#999"/>'
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#999"/>'
           f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">{y_hi:.2g}</text>'
           f'<text x="{left - 4}" y="{top + h}" font-size="10" text-anchor="end">0</text>'
           f'<text x="{left + w}" y="{top + h + 16}" font-size="10" text-anchor="end">step {x_hi:g}</text>']
    if mark_x is not None:
        x, _ = xy(mark_x, 0)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" stroke="#10b981" stroke-dasharray="4 3">'
                   f'<title>kept: step {mark_x:g}</title></line>')
    for j, (name, pts) in enumerate(series.items()):
        color = PALETTE[j % len(PALETTE)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(*p) for p in pts))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"><title>{html.escape(name)}'
                   f'</title></polyline>' + "".join(f'<circle cx="{xy(*p)[0]:.1f}" cy="{xy(*p)[1]:.1f}" r="2" fill="{color}">'
                                                    f'<title>{html.escape(name)} step {p[0]}: {p[1]:.3f}</title></circle>'
                                                    for p in pts if len(pts) < 60))
        out.append(f'<text x="{left + w + 8}" y="{top + 10 + 13 * j}" font-size="10" fill="{color}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def training_section(training: dict) -> list[str]:
    """report.html's training curve: loss per logging step, validation accuracy per field per measurement."""
    esc = html.escape
    val = training.get("val") or []
    how = {"measured": "measured (until validation accuracy stopped improving)", "fixed": "fixed (--epochs)"}
    body = [f"<h2>Training curve</h2><p>Length {esc(how.get(training.get('length'), str(training.get('length'))))}: "
            f"{training.get('global_step')} steps"
            + (f", weights kept from step {training['best_step']}" if training.get("best_step") is not None else "")
            + (f"; stopped: {esc(training['stopped'])}" if training.get("stopped") else "") + ".</p>"]
    if training.get("loss"):
        body.append(svg_lines({"train loss": training["loss"]}, "training loss"))
    if val:
        fields = list(val[0]["val_fields"])
        series = {f: [[p["step"], p["val_fields"][f]] for p in val if p["val_fields"].get(f) is not None] for f in fields}
        series["exact match"] = [[p["step"], p["val_exact"]] for p in val if p.get("val_exact") is not None]
        body.append(svg_lines(series, "validation accuracy per field", y_max=1.0, mark_x=training.get("best_step")))
        head = "".join(f"<th>{esc(f)}</th>" for f in fields)
        rows = "".join(f"<tr><td>{p['step']}</td><td>{p['epoch']}</td><td>{fmt_value(p.get('loss'))}</td>"
                       + "".join(f"<td>{fmt_value(p['val_fields'].get(f))}</td>" for f in fields)
                       + f"<td>{fmt_value(p.get('val_exact'))}</td></tr>" for p in val)
        body.append(f"<table class=curve><tr><th>step</th><th>epoch</th><th>loss</th>{head}<th>exact</th></tr>{rows}</table>")
    return body


def render_html(report: dict) -> str:
    """report.html: a standalone page (inline SVG, no external files) with the plots and the markdown tables."""
    esc = html.escape
    gate = report["gate"]
    body = [f"<h1>Eval report: {esc(report['task'])}</h1>",
            f"<p>Run <code>{esc(report['run'])}</code>, {report['n']} rows from <code>{esc(report['data'])}</code>, "
            f"{esc(report['created'])}.</p>"]
    body += [f"<p class=note>{esc(n)}</p>" for n in report.get("notes", [])]
    if gate["min"] or gate["baseline"]:
        status = "passed" if gate["passed"] else "failed"
        body.append(f"<h2>Gate: <span class={status}>{status}</span></h2><ul>"
                    + "".join(f"<li><code>{esc(f)}</code></li>" for f in gate["failures"]) + "</ul>")
    body += ["<h2>Accuracy per field and model</h2>", svg_bars(report)]
    if report.get("training"):
        body += training_section(report["training"])
    for m, sec in report["models"].items():
        for path, f in sec["fields"].items():
            if "confusion" in f:
                title = f"confusion {path} ({m})"
                body += [f"<h2>Confusion <code>{esc(path)}</code> ({esc(m)}): rows gold, columns predicted</h2>",
                         svg_confusion(f, title)]
    for m, sec in report["models"].items():
        lat = sec.get("latency_ms")
        if lat and lat.get("values"):
            body += [f"<h2>Latency ({esc(m)}): mean {lat['mean']:.1f} ms, p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}</h2>",
                     svg_histogram(lat["values"], f"latency {m}")]
    models = list(report["models"])
    rows = "".join("<tr><td>" + esc(n) + "</td>" + "".join(
        f"<td>{fmt_value(report['models'][m]['metrics'].get(n))}</td>" for m in models) + "</tr>" for n in metric_names(report))
    body.append("<h2>Metrics</h2><table><tr><th>metric</th>" + "".join(f"<th>{esc(m)}</th>" for m in models)
                + "</tr>" + rows + "</table>")
    wrong = [r for r in report["models"][PRIMARY]["rows"] if not r["exact"]]
    items = []
    for r in wrong[:100]:
        what = r["error"] or "; ".join(f"{k}: expected {json.dumps(v['expected'], ensure_ascii=False)}, "
                                       f"got {json.dumps(v['got'], ensure_ascii=False)}" for k, v in r["wrong"].items())
        items.append(f"<li>#{r['i']} <q>{esc(r['input'])}</q>: {esc(what)}</li>")
    body.append(f"<h2>Wrong answers ({len(wrong)} of {report['models'][PRIMARY]['n']})</h2><ul>{''.join(items)}</ul>")
    style = ("body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#111}"
             "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}"
             "td:first-child{text-align:left}.failed{color:#b91c1c}.passed{color:#047857}.note{color:#555}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>eval {esc(report['task'])}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")

