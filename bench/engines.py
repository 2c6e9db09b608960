"""The two engines' answers on tool_picker's three eval sets, same run: accuracy and byte-identity of the answers.

    HF_HUB_OFFLINE=1 python bench/engines.py --run runs/tool_picker/<run-id>           # ~5 min on 2 CPU cores
    HF_HUB_OFFLINE=1 python bench/engines.py --run <run> --sets dev --threads 1

For each set, `schemabuild eval tool_picker --run RUN --data SET --engine E` runs once per engine (`torch`: the run's
model in fp32 through transformers, what `--precision auto` gives on a CPU without bf16; `llamacpp`: our decoding
over llama.cpp's forward pass on the run's Q8_0 GGUF). Printed per set and engine: tool accuracy, query token-F1,
null recall, exact match, and how many answers are byte-identical to the torch engine's. The accuracy rule of
issue 17: a faster path may lose at most 1 point against fp32. Scores only: nothing here feeds training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = {"gold": ROOT / "evals" / "tool_picker.jsonl", "dev": ROOT / "evals" / "dev" / "tool_picker.jsonl",
        "holdout": ROOT / "evals" / "holdout" / "tool_picker.jsonl"}


def evaluate(run: Path, data: Path, engine: str, out: Path, threads: int | None) -> tuple[dict, list[str]]:
    """(metrics, answer texts in row order) of `schemabuild eval` on `engine`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    cmd = [sys.executable, "-m", "schemabuild", "eval", "tool_picker", "--tasks-dir", str(ROOT / "tasks"),
           "--run", str(run), "--data", str(data), "--engine", engine, "--out", str(out)]
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # exit code is the gate
    m = json.loads((out / "report.json").read_text())["models"]["finetuned"]["metrics"]
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines() if x.strip()]
    texts = [r["text"] for r in sorted(rows, key=lambda r: r["i"]) if r["model"] == "finetuned"]
    return {"tool": m["field.tool"], "query_f1": m.get("field.query.token_f1"),
            "null_recall": m.get("field.query.null_recall"), "exact": m.get("exact_match")}, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a tool_picker run directory")
    ap.add_argument("--sets", default="gold,dev,holdout")
    ap.add_argument("--engines", default="torch,llamacpp")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the torch side")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="engines_"))
    engines = a.engines.split(",")
    print(f"{'set':8} {'engine':9} {'tool':>6} {'F1':>6} {'null R':>6} {'exact':>6}  same answer as {engines[0]}")
    for name in a.sets.split(","):
        first = None
        for engine in engines:
            metrics, texts = evaluate(a.run, SETS[name], engine, work / f"{name}_{engine}", a.threads)
            first = first or texts
            same = sum(x == y for x, y in zip(texts, first))
            cells = " ".join(f"{v:6.3f}" if v is not None else f"{'-':>6}" for v in metrics.values())
            print(f"{name:8} {engine:9} {cells}  {same}/{len(first)}", flush=True)
            print(json.dumps({"set": name, "engine": engine, **metrics, "same": same, "rows": len(first)}), flush=True)


if __name__ == "__main__":
    main()
