"""fp32 vs int8 vs bf16 weights on the same rows, side by side in one run: latency, accuracy, byte identity.

    python bench/precision.py --run runs/tool_picker/<run-id>                  # val rows of the run + the eval sets
    python bench/precision.py --run <run> --sets val --precisions fp32,int8,int8-head,int8-peft

Every variant loads the same model folder through the one loader (models.py) and answers each row greedily, one
request at a time; each row runs every variant before the next row does (interleaved), so load from other jobs
on a shared machine hits all variants alike. Printed per set: tool accuracy, exact match, byte identity with fp32,
p50 latency and its ratio to fp32's.

Variants: fp32, bf16, int8 (what `--precision int8` serves: merged, linears int8, head fp32), int8-head (the
head int8 too), int8-nodown (the MLP's down_proj, whose input carries the largest activation outliers, kept fp32),
int8-peft (the adapter NOT merged: base linears int8, LoRA fp32, the multi-adapter form).

Sets: `val` = the run's own synthesized validation split (what `auto`'s choice was made on); `gold`, `dev`,
`holdout` = evals/ (scored here only, never tuned on). The script reads the eval rows; nobody reads them by eye.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
KEEPS = {"int8-head": ("lora_",), "int8-nodown": ("lm_head", "lora_", "down_proj")}  # variant: layers kept fp32
EVAL_SETS = {"gold": "evals/tool_picker.jsonl", "dev": "evals/dev/tool_picker.jsonl",
             "holdout": "evals/holdout/tool_picker.jsonl"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a tool_picker run directory (or its model/ folder)")
    ap.add_argument("--sets", default="val,gold,dev,holdout", help="row sets, comma-separated")
    ap.add_argument("--precisions", default="fp32,int8,int8-head,int8-peft,bf16", help="variants, comma-separated")
    ap.add_argument("--limit", type=int, default=0, help="first N rows of each set (0 = all)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--max-tokens", type=int, default=96)
    return ap.parse_args(argv)


def val_rows(task, model_dir: Path) -> list[tuple[str, dict]]:
    """(input, output) pairs of the run's synthesized validation split (chat JSONL)."""
    rows = []
    for line in (model_dir.parent / "data" / "val.jsonl").read_text().splitlines():
        msgs = json.loads(line)["messages"]
        user = next(m["content"] for m in msgs if m["role"] == "user")
        answer = next(m["content"] for m in msgs if m["role"] == "assistant")
        rows.append((user, task.validate_output(json.loads(answer), "val").model_dump()))
    return rows


def load_sets(task, model_dir: Path, names: list[str], limit: int) -> dict[str, list[tuple[str, dict]]]:
    from schemabuild.task import load_jsonl_examples

    sets = {}
    for name in names:
        if name == "val":
            rows = val_rows(task, model_dir)
        else:
            rows = [(ex.input, ex.output.model_dump()) for ex in load_jsonl_examples(task, ROOT / EVAL_SETS[name])]
        sets[name] = rows[:limit] if limit else rows
    return sets


def load_variant(task, model_dir: Path, name: str):
    """A Predictor for one variant (see the module docstring)."""
    from schemabuild import precision as P
    from schemabuild.models import adapter_base, load_adapters, load_checked, load_model
    from schemabuild.predictor import Predictor

    if name in ("fp32", "bf16", "int8"):
        return Predictor.from_model_dir(task, model_dir, device="cpu", precision=name)
    if name in KEEPS:  # int8 with another set of layers kept in fp32
        model, tokenizer, contract = load_model(task, model_dir, "cpu")
        model = P.quantize_int8(model, P.int8_engine(), keep=KEEPS[name])
        return Predictor(task, model, tokenizer, contract, device="cpu")
    if name == "int8-peft":
        contract, tokenizer = load_checked(task, model_dir)
        model = load_adapters(adapter_base(model_dir, contract), [(None, model_dir)], "cpu", precision="int8")
        return Predictor(task, model, tokenizer, contract, device="cpu")
    raise SystemExit(f"unknown variant {name}")


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from schemabuild.precision import choose_precision, weight_dtypes
    from schemabuild.task import load_task

    torch.set_num_threads(args.threads)
    task = load_task("tool_picker", ROOT / "tasks")
    path = Path(args.run)
    model_dir = path if (path / "contract.json").is_file() else path / "model"
    names = [n.strip() for n in args.precisions.split(",") if n.strip()]
    print(f"model {model_dir}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"{choose_precision('auto', 'cpu').line}")
    preds = {n: load_variant(task, model_dir, n) for n in names}
    for n, p in preds.items():
        print(f"  {n:10s} weights: {weight_dtypes(p.decoder.model)}")
    sets = load_sets(task, model_dir, [s.strip() for s in args.sets.split(",") if s.strip()], args.limit)
    for p in preds.values():  # warm-up
        p.predict("hello", max_tokens=args.max_tokens)
    for set_name, rows in sets.items():
        report(set_name, rows, preds, args.max_tokens)


def report(set_name: str, rows, preds: dict, max_tokens: int) -> None:
    texts = {n: [] for n in preds}
    outs = {n: [] for n in preds}
    ms = {n: [] for n in preds}
    for text, _ in rows:  # interleaved: every variant on row i before any on row i+1
        for n, p in preds.items():
            t0 = time.perf_counter()
            r = p.predict(text, max_tokens=max_tokens)
            ms[n].append((time.perf_counter() - t0) * 1000)
            texts[n].append(r.text)
            outs[n].append(r.output.model_dump() if r.output is not None else None)
    first = next(iter(preds))
    p50_ref = statistics.median(ms[first])
    print(f"\n[{set_name}] {len(rows)} rows, one request at a time, greedy")
    print(f"  {'variant':10s}{'tool acc':>10s}{'exact':>8s}{'same bytes as ' + first:>22s}{'p50 ms':>9s}{'vs ' + first:>9s}")
    for n in preds:
        tool = sum(o is not None and o.get("tool") == g.get("tool") for o, (_, g) in zip(outs[n], rows)) / len(rows)
        exact = sum(o == g for o, (_, g) in zip(outs[n], rows)) / len(rows)
        same = sum(a == b for a, b in zip(texts[n], texts[first]))
        p50 = statistics.median(ms[n])
        print(f"  {n:10s}{tool:10.3f}{exact:8.3f}{same:>15d}/{len(rows):<6d}{p50:9.1f}{p50 / p50_ref:8.2f}x")


if __name__ == "__main__":
    sys.exit(main())
