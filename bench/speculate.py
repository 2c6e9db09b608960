"""Prompt-lookup speculation on vs off: one `predict` at a time on a trained run, the two sides interleaved.

    python bench/speculate.py --run runs/tool_picker/latest --limit 40 [--set holdout] [--threads 1]

One model in memory, two predictors over it (`Decoder(speculate=True)` and `speculate=False`); for each message,
both sides answer (the order alternating per message, so drift and load from other jobs hit both alike) before the
next message. Printed: p50 / p90 latency per side and the ratio on / off, forward passes per answer token per side,
the share of draft tokens the model kept, and how many answers are byte-identical across the sides (must be all).
Only aggregates are printed: the set's messages are timed, never shown or scored here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
SETS = {"gold": ROOT / "evals" / "tool_picker.jsonl", "dev": ROOT / "evals" / "dev" / "tool_picker.jsonl",
        "holdout": ROOT / "evals" / "holdout" / "tool_picker.jsonl"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a tool_picker run directory (with model/)")
    ap.add_argument("--set", choices=list(SETS), default="holdout", help="whose messages to time")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--max-tokens", type=int, default=96)
    a = ap.parse_args()
    import torch

    from schemabuild.models import load_model
    from schemabuild.predictor import Predictor
    from schemabuild.task import load_jsonl_examples, load_task

    torch.set_num_threads(a.threads)
    task = load_task("tool_picker", ROOT / "tasks")
    texts = [ex.input for ex in load_jsonl_examples(task, SETS[a.set])][: a.limit]
    model, tokenizer, contract = load_model(task, a.run / "model", "cpu", precision=a.precision)
    sides = {"on": Predictor(task, model, tokenizer, contract, device="cpu", speculate=True),
             "off": Predictor(task, model, tokenizer, contract, device="cpu", speculate=False)}
    for p in sides.values():  # warm-up: prefix KV, first allocations
        p.predict(texts[0], max_tokens=a.max_tokens)
    sides["on"].decoder.drafts.clear()
    ms = {n: [] for n in sides}
    passes = {n: 0 for n in sides}
    tokens = {n: 0 for n in sides}
    answers = {n: [] for n in sides}
    for i, text in enumerate(texts):
        for name in (["on", "off"] if i % 2 == 0 else ["off", "on"]):
            pred = sides[name]
            req = pred.request(text, max_tokens=a.max_tokens)
            t0 = time.perf_counter()
            [res] = pred.decoder.generate([req])
            ms[name].append((time.perf_counter() - t0) * 1000)
            passes[name] += res.forward_passes
            tokens[name] += res.completion_tokens
            answers[name].append(res.token_ids)
    drafts = sides["on"].decoder.drafts
    print(f"{len(texts)} {a.set} messages, one at a time, greedy, {a.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    p50 = {n: statistics.median(v) for n, v in ms.items()}
    for name in sides:
        v = sorted(ms[name])
        print(json.dumps({"speculate": name, "p50_ms": round(p50[name], 1),
                          "p90_ms": round(v[int(0.9 * (len(v) - 1))], 1),
                          "passes_per_token": round(passes[name] / tokens[name], 3),
                          "passes_per_answer": round(passes[name] / len(texts), 2)}))
    same = sum(x == y for x, y in zip(answers["on"], answers["off"]))
    print(json.dumps({"p50_on_over_off": round(p50["on"] / p50["off"], 3),
                      "paired_median_on_over_off":
                          round(statistics.median(x / y for x, y in zip(ms["on"], ms["off"])), 3),
                      "draft_tokens_fed": drafts["fed"], "draft_tokens_kept": drafts["kept"],
                      "kept_share": round(drafts["kept"] / max(1, drafts["fed"]), 3),
                      "identical_answers": f"{same}/{len(texts)}"}))


if __name__ == "__main__":
    main()
