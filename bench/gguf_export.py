"""The GGUF export measured side by side in one run: file sizes, then llama.cpp (llama-cpp-python) beside our own
predictor on the same messages under the task's JSON schema.

    python bench/gguf_export.py                                   # the latest tool_picker run, evals/holdout/tool_picker.jsonl
    python bench/gguf_export.py --run runs/tool_picker/<run-id> --gold evals/tool_picker.jsonl --threads 2

(a) the size of the f32, f16 and q8_0 files `schemabuild export --format gguf` writes
(b) latency per message, one request at a time, interleaved (ours, llama.cpp, ours, ...) on the same threads: p50, p95
(c) validity and field accuracy of both (scored by schemabuild.evaluate.score), and how often the two outputs agree
(d) with --roundtrip N: the f32 and q8_0 files read back by transformers' GGUF loader, decoded by our own predictor:
    how many answers are identical to the merged model's

The gold file is only scored: no row of it is printed. Speed figures are ratios taken in this one run (shared CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="tool_picker")
    ap.add_argument("--run", help="a run directory or run id [default: the task's latest run]")
    ap.add_argument("--runs-dir", help="runs root [default: $SCHEMABUILD_RUNS or ./runs]")
    ap.add_argument("--gold", type=Path, help="scored messages [default: evals/holdout/<task>.jsonl]")
    ap.add_argument("--limit", type=int, default=0, help="the first N messages (0 = all)")
    ap.add_argument("--quant", default="q8_0", choices=("q8_0", "f16", "f32"), help="the GGUF llama.cpp runs")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads and llama.cpp threads alike")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--roundtrip", type=int, default=0, metavar="N",
                    help="also (d) on the first N messages: the GGUFs through transformers' loader (0 = skip)")
    ap.add_argument("--out", type=Path, help="where the GGUF files go [default: a temporary folder]")
    return ap.parse_args(argv)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main(argv=None) -> None:
    a = parse_args(argv)
    import torch
    import llama_cpp

    from schemabuild.contract import grammar_schema
    from schemabuild.evaluate import Answer, score
    from schemabuild.predictor import Predictor
    from schemabuild.runs import resolve_run
    from schemabuild.task import load_jsonl_examples, load_task
    from schemabuild.train import QUANTS, export_gguf

    torch.set_num_threads(a.threads)
    task = load_task(a.task, ROOT / "tasks")
    run = resolve_run(a.task, a.run, a.runs_dir, need="model")
    gold_path = a.gold or ROOT / "evals" / "holdout" / f"{a.task}.jsonl"
    rows = load_jsonl_examples(task, gold_path)
    rows = rows[: a.limit] if a.limit else rows
    out = a.out or Path(tempfile.mkdtemp(prefix="gguf-bench-"))

    files = {q: export_gguf(task, run, out, q, say=lambda _: None) for q in QUANTS}
    print(f"run {run}\nmessages: {len(rows)} from {gold_path.relative_to(ROOT) if gold_path.is_relative_to(ROOT) else gold_path}"
          f", threads {a.threads}, llama.cpp on {a.quant}, llama-cpp-python {llama_cpp.__version__}\n")
    print("| GGUF | size (MB) |\n|---|---|")
    for q, f in files.items():
        print(f"| {q} | {f.stat().st_size / 1e6:.1f} |")

    predictor = Predictor.from_run(task, run=run, device="cpu")
    system = predictor.contract["system_prompt"]
    schema = grammar_schema(task.output)
    llm = llama_cpp.Llama(model_path=str(files[a.quant]), n_ctx=1024, n_threads=a.threads, n_threads_batch=a.threads,
                          verbose=False, seed=0)
    grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)

    def ours(text: str) -> Answer:
        t0 = time.perf_counter()
        p = predictor.predict(text, max_tokens=a.max_tokens)
        return Answer(p.text, latency_ms=(time.perf_counter() - t0) * 1000, finish_reason=p.finish_reason)

    def theirs(text: str) -> Answer:
        t0 = time.perf_counter()
        r = llm.create_chat_completion(messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
                                       grammar=grammar, temperature=0.0, max_tokens=a.max_tokens)
        ms = (time.perf_counter() - t0) * 1000
        return Answer(r["choices"][0]["message"]["content"], latency_ms=ms, finish_reason=r["choices"][0]["finish_reason"])

    for ex in task.examples[:3]:  # warm-up on the task's own examples
        ours(ex.input), theirs(ex.input)
    answers = {"schemabuild": [], "llama.cpp": []}
    for ex in rows:  # interleaved, so both sides see the same machine load
        answers["schemabuild"].append(ours(ex.input))
        answers["llama.cpp"].append(theirs(ex.input))

    reports = {name: score(task, rows, ans, name=name) for name, ans in answers.items()}
    fields = [k for k in reports["schemabuild"]["metrics"] if k.startswith("field.") and k.count(".") == 1]
    print("\n| engine | p50 ms | p95 ms | json valid | schema valid | " + " | ".join(fields) + " |")
    print("|---|---|---|---|---|" + "---|" * len(fields))
    for name, rep in reports.items():
        lat = [x.latency_ms for x in answers[name]]
        m = rep["metrics"]
        print(f"| {name} | {statistics.median(lat):.0f} | {pct(lat, 0.95):.0f} | {m['json_valid']:.3f} | "
              f"{m['schema_valid']:.3f} | " + " | ".join(f"{m[f]:.3f}" for f in fields) + " |")
    same = sum(x["got"] == y["got"] for x, y in zip(reports["schemabuild"]["rows"], reports["llama.cpp"]["rows"]))
    ratio = statistics.median(x.latency_ms for x in answers["llama.cpp"]) / statistics.median(
        x.latency_ms for x in answers["schemabuild"])
    compact = sum(not any(c in (x.text or "") for c in "\n\t") and ", " not in (x.text or "") and '": ' not in (x.text or "")
                  for x in answers["llama.cpp"])
    tool = "field.tool" if "field.tool" in fields else fields[0]
    diff = reports["llama.cpp"]["metrics"][tool] - reports["schemabuild"]["metrics"][tool]
    print(f"\nidentical outputs: {same}/{len(rows)}; llama.cpp p50 / ours: {ratio:.2f}x; "
          f"llama.cpp {tool} minus ours: {diff:+.3f}; llama.cpp answers in compact JSON: {compact}/{len(rows)}")
    if a.roundtrip:
        roundtrip(task, predictor, files, [ex.input for ex in rows][: a.roundtrip], answers["schemabuild"], a.max_tokens)


def roundtrip(task, predictor, files: dict, texts: list[str], merged_answers: list, max_tokens: int) -> None:
    """(d): our predictor on the weights transformers reads back from each GGUF, against the merged model's answers."""
    import torch
    from transformers import AutoModelForCausalLM

    from schemabuild.predictor import Predictor

    for quant in ("f32", "q8_0"):
        path = files[quant]
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
        back = Predictor(task, model, predictor.tokenizer, predictor.contract, device="cpu")
        same = sum(back.predict(t, max_tokens=max_tokens).text == m.text for t, m in zip(texts, merged_answers))
        print(f"{quant} GGUF read back by transformers: {same}/{len(texts)} answers identical to the merged model's")


if __name__ == "__main__":
    main()
