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

