"""Offline synthesis: wall time, near-duplicate speed, and how much the recombined pairs teach.

    HF_HUB_OFFLINE=1 python bench/synth_offline.py

Prints, side by side in one run:
- `schemabuild synth tool_picker` (offline teacher) wall time at --n 1000 and --n 3000 (goal: seconds);
- near-duplicate removal over the n=3000 candidate inputs: the prefix-filtered index vs all-pairs Jaccard
  (same answer, speed ratio);
- a data-usefulness proxy that needs no GPU: a character n-gram Naive Bayes tool classifier trained on the
  48 hand-written examples vs on the synthesized train.jsonl, tool accuracy on the gold set
  evals/tool_picker.jsonl (never trained on). It is not the fine-tuned model, only a sign of what the
  data holds.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def grams(text: str) -> list[str]:
    from schemabuild.synth.checks import normalize

    t = f" {normalize(text)} "
    return [t[i:i + n] for n in (3, 4, 5) for i in range(len(t) - n + 1)]


def naive_bayes(pairs: list[tuple[str, str]]):
    counts: dict[str, Counter] = defaultdict(Counter)
    prior = Counter(label for _, label in pairs)
    for text, label in pairs:
        counts[label].update(grams(text))
    vocab = {g for c in counts.values() for g in c}
    totals = {label: sum(c.values()) for label, c in counts.items()}

    def predict(text: str) -> str:
        gs = grams(text)
        return max(prior, key=lambda lab: math.log(prior[lab]) + sum(
            math.log((counts[lab][g] + 1) / (totals[lab] + len(vocab))) for g in gs))

    return predict


def main() -> None:
    from schemabuild.synth.checks import jaccard, near_duplicates, shingles
    from schemabuild.contract import split_chat_row
    from schemabuild.runs import read_jsonl
    from schemabuild.synth import SynthConfig, synthesize
    from schemabuild.task import load_jsonl_examples, load_task

    task = load_task("tool_picker", ROOT / "tasks")
    gold = load_jsonl_examples(task, ROOT / "evals" / "tool_picker.jsonl")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1000, 3000):
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                run_dir = synthesize(task, SynthConfig(n=n), runs_dir=Path(tmp) / f"n{n}")
            wall = time.perf_counter() - start
            manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
            rows = [split_chat_row(r) for split in ("train", "val") for r in read_jsonl(run_dir / "data" / f"{split}.jsonl")]
            train = [split_chat_row(r) for r in read_jsonl(run_dir / "data" / "train.jsonl")]
            runs[n] = (wall, manifest, rows, train)
            print(f"synth offline --n {n}: {wall:.2f} s wall, kept {manifest['counts']['kept']} "
                  f"(train {manifest['counts']['train']}, val {manifest['counts']['val']}), "
                  f"rejected {manifest['counts']['rejected']} {manifest['rejected_by_stage']}")

    # near-duplicate removal: index vs all pairs, same inputs
    texts = [text for _, text, _ in runs[3000][2]]
    sets = [shingles(t) for t in texts]
    start = time.perf_counter()
    fast = near_duplicates(sets, 0.8)  # 0.8 so that there is something to find among already-deduped rows
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    kept, slow = [], {}
    for i, s in enumerate(sets):
        hit = next((j for j in kept if jaccard(s, sets[j]) >= 0.8), None)
        if hit is None:
            kept.append(i)
        else:
            slow[i] = hit
    t_slow = time.perf_counter() - start
    print(f"near-dup over {len(sets)} inputs (Jaccard >= 0.8): index {t_fast:.3f} s vs all-pairs {t_slow:.3f} s "
          f"= {t_slow / t_fast:.1f}x faster, same result: {set(fast) == set(slow)} ({len(fast)} near-dups)")

    # usefulness proxy
    def accuracy(predict) -> float:
        return sum(predict(e.input) == e.output.tool for e in gold) / len(gold)

    base = accuracy(naive_bayes([(e.input, e.output.tool) for e in task.examples]))
    print(f"NB tool accuracy on {len(gold)} gold rows: 48 examples {base:.3f}", end="")
    for n in (1000, 3000):
        train = runs[n][3]
        acc = accuracy(naive_bayes([(text, json.loads(target)["tool"]) for _, text, target in train]))
        print(f" | offline synth n={n} ({len(train)} train rows) {acc:.3f}", end="")
    print()


if __name__ == "__main__":
    main()
