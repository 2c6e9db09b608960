"""Prefix reuse: prefill and whole-request latency with and without reusing the shared prompt prefix's KV, measured
side by side in one run (each input runs on both decoders, interleaved, before the next input).

    python bench/prefix.py                        # the tiny model (built on the spot) + the default 135M adapter
    python bench/prefix.py --model runs/tool_picker/<run-id>/model --limit 12

Both decoders share one loaded model; "reuse" is the Predictor's decoder (prefix KV cached, warmed), "full" a
Decoder with prefix_cache=0. Prefill = one `Decoder.step` of a fresh batch (the prefill pass, the first token and
its jump-forward); whole request = `Decoder.generate` of one request. The fastest of `--repeat` runs is kept.
Rows: the model's own (student) prompt, and the task's full instructions as the system prompt (what an un-tuned
base gets), to show how the gain grows with the prefix.

Mixed adapters: the same model's LoRA adapter loaded twice under two names on one unmerged base (the tiny model gets
two random adapters), `--batch` requests alternating between them, `Decoder.generate` as one mixed batch (PEFT
`adapter_names`) vs one batch per adapter in turn (`mixed_adapters=False`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
REAL = Path("/work/main/runs/tool_picker/20261121-154102-5f84/model")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="a tool_picker model folder (repeatable) [default: tiny + 135M]")
    ap.add_argument("--limit", type=int, default=12, help="gold inputs used")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="runs per input and method; the fastest is kept")
    ap.add_argument("--batch", type=int, default=8, help="rows in the batched-prefill line")
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args(argv)


def tiny_model(task) -> Path:
    """An untrained tiny tool_picker model with its contract (random weights: the latency is what counts)."""
    from transformers import AutoTokenizer

    from schemabuild.contract import build_contract, save_contract
    from schemabuild.train.tiny import build_tiny

    path = build_tiny(task, Path(tempfile.mkdtemp(prefix="bench-prefix-")) / "model")
    save_contract(build_contract(task, AutoTokenizer.from_pretrained(path), base_model="tiny", adapter=False), path)
    return path


def best_of(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def prefill(decoder, reqs):
    from schemabuild.inference.kv import Batch

    batch = Batch()
    decoder.step(batch, reqs)
    decoder.drop(batch, batch.rows)


def requests(pred, texts, instructions, max_tokens):
    from schemabuild.contract import encode_prompt, prompt_prefix, shared_prefix_len
    from schemabuild.inference.request import Request

    prefix = prompt_prefix(pred.tokenizer, instructions)
    out = []
    for t in texts:
        ids = encode_prompt(pred.tokenizer, instructions, t)
        out.append(Request(ids, pred.schema, max_tokens=max_tokens, prefix_len=shared_prefix_len(prefix, ids)))
    return out


def measure(pred, full, reqs, args) -> dict:
    """Per-input timings on both decoders, interleaved; batched prefill of the first `args.batch` rows."""
    reuse = pred.decoder
    for dec in (reuse, full):  # warm-up: the prefix KV, first-call allocations
        dec.generate(reqs[:1])
    t = {k: [] for k in ("pre_reuse", "pre_full", "req_reuse", "req_full")}
    same = 0
    for r in reqs:
        t["pre_reuse"].append(best_of(lambda: prefill(reuse, [r]), args.repeat)[1])
        t["pre_full"].append(best_of(lambda: prefill(full, [r]), args.repeat)[1])
        a, t_a = best_of(lambda: reuse.generate([r])[0], args.repeat)
        b, t_b = best_of(lambda: full.generate([r])[0], args.repeat)
        t["req_reuse"].append(t_a)
        t["req_full"].append(t_b)
        same += a.token_ids == b.token_ids
    batch = reqs[: args.batch]
    t["batch_reuse"] = best_of(lambda: prefill(reuse, batch), args.repeat)[1]
    t["batch_full"] = best_of(lambda: prefill(full, batch), args.repeat)[1]
    t["same"], t["n_batch"] = same, len(batch)
    return t


def report(name: str, reqs, t: dict) -> None:
    ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    prompt = statistics.mean(len(r.prompt_ids) for r in reqs)
    prefix = statistics.mean(r.prefix_len for r in reqs)
    print(f"  {name}: prompt {prompt:.1f} tokens, shared prefix {prefix:.1f} ({sum(r.prefix_len > 0 for r in reqs)}"
          f"/{len(reqs)} rows reuse it); same tokens with and without reuse on {t['same']}/{len(reqs)}")
    for label, a, b in [("prefill, one row (p50 ms)", ms(t["pre_full"]), ms(t["pre_reuse"])),
                        (f"prefill, {t['n_batch']} rows (ms)", 1000 * t["batch_full"], 1000 * t["batch_reuse"]),
                        ("whole request (p50 ms)", ms(t["req_full"]), ms(t["req_reuse"]))]:
        print(f"    {label:28s} full {a:8.1f}   reuse {b:8.1f}   reuse/full {b / a:5.2f}")


def two_adapter_model(model_dir: Path, contract: dict):
    """One base carrying two adapters "a" and "b": the folder's adapter twice, or two random ones on a full model."""
    import torch
    from peft import LoraConfig, get_peft_model

    from schemabuild.models import adapter_base, is_adapter, load_adapters, load_causal_lm

    if is_adapter(model_dir, contract):
        return load_adapters(adapter_base(model_dir, contract), [("a", model_dir), ("b", model_dir)], "cpu")
    torch.manual_seed(0)
    cfg = LoraConfig(r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
                     init_lora_weights=False)
    model = get_peft_model(load_causal_lm(model_dir, "cpu"), cfg, adapter_name="a")
    model.add_adapter("b", cfg)
    return model.eval()


def mixed(pred, model_dir: Path, texts, args) -> None:
    from schemabuild.contract import system_prompt
    from schemabuild.inference.decoder import Decoder

    model = two_adapter_model(model_dir, pred.contract)
    d = pred.decoder
    reqs = requests(pred, texts[: args.batch], system_prompt(pred.task, pred.contract), args.max_tokens)
    for i, r in enumerate(reqs):
        r.adapter = "ab"[i % 2]
    one = Decoder(model, d.tokenizer, d.stop_ids, mixed_adapters=True)
    turns = Decoder(model, d.tokenizer, d.stop_ids, mixed_adapters=False)
    times = {}
    outs = {}
    for name, dec in (("one mixed batch", one), ("a batch per adapter", turns), ("one mixed batch ", one)):
        dec.generate(reqs[:2])  # warm-up: prefix KV per adapter
        outs[name], times[name] = best_of(lambda: dec.generate(reqs), args.repeat)
    same = sum(a.token_ids == b.token_ids for a, b in zip(outs["one mixed batch"], outs["a batch per adapter"]))
    base = times["a batch per adapter"]
    print(f"  mixed adapters, {len(reqs)} requests over 2 adapters (same tokens on {same}/{len(reqs)}):")
    for name, t in times.items():
        print(f"    {name.strip():28s} {1000 * t:8.1f} ms   vs per-adapter {t / base:5.2f}")


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from schemabuild.contract import system_prompt
    from schemabuild.inference.decoder import Decoder
    from schemabuild.predictor import Predictor
    from schemabuild.task import load_jsonl_examples, load_task

    torch.set_num_threads(args.threads)
    task = load_task("tool_picker", ROOT / "tasks")
    texts = [ex.input for ex in load_jsonl_examples(task, ROOT / "evals" / "tool_picker.jsonl")][: args.limit]
    models = [Path(m) for m in args.model] if args.model else [tiny_model(task)] + ([REAL] if REAL.is_dir() else [])
    print(f"torch threads {torch.get_num_threads()}, {len(texts)} gold inputs, max_tokens {args.max_tokens}, "
          f"fastest of {args.repeat}")
    for model_dir in models:
        pred = Predictor.from_model_dir(task, model_dir, device="cpu")
        d = pred.decoder
        full = Decoder(d.model, d.tokenizer, d.stop_ids, device=d.device, prefix_cache=0)
        print(f"\nmodel {model_dir} ({sum(p.numel() for p in d.model.parameters()) / 1e6:.1f}M parameters)")
        for name, instructions in [("own prompt", system_prompt(task, pred.contract)),
                                   ("full instructions", task.instructions)]:
            reqs = requests(pred, texts, instructions, args.max_tokens)
            report(name, reqs, measure(pred, full, reqs, args))
        mixed(pred, model_dir, texts, args)


if __name__ == "__main__":
    sys.exit(main())
