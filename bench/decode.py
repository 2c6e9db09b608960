"""Decoding benchmarks, measured side by side in one run on a trained tool_picker model and its gold set.

    python bench/decode.py --run runs/tool_picker/<run-id>        # a trained run (or its model/ folder)
    python bench/decode.py                                        # the latest tool_picker run, else trains a tiny one

(a) constrained vs unconstrained greedy latency, over the inputs where both give the same output (goal ≤ 1.10)
(b) our decoder vs `outlines.Generator` (transformers wrapper, built once per schema and warmed), one request
    at a time on the gold set (goal ≥ 3× faster); every installed outlines backend is timed, so the numbers also
    say why we drive xgrammar ourselves
(c) forward passes per output token with jump-forward (goal ≤ 0.5)
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


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a tool_picker run directory (or its model/ folder); default: the latest run")
    ap.add_argument("--runs-dir", help="runs root for the default run [default: $SCHEMABUILD_RUNS or ./runs]")
    ap.add_argument("--limit", type=int, default=0, help="use the first N gold inputs (0 = all)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (1 is fastest for tiny models)")
    ap.add_argument("--device", default=None, help="cpu / cuda [default: cuda when available]")
    ap.add_argument("--backends", default="outlines_core,xgrammar,llguidance",
                    help="outlines backends to time (those not installed are skipped)")
    ap.add_argument("--batch-size", type=int, default=16, help="batch size for the batched-throughput line")
    return ap.parse_args(argv)


def load(args):
    """(task, predictor, gold examples): the run's model through the contract, or a freshly trained tiny run."""
    from schemabuild.predictor import Predictor
    from schemabuild.runs import latest_run
    from schemabuild.task import load_jsonl_examples, load_task

    task = load_task("tool_picker", ROOT / "tasks")
    gold = load_jsonl_examples(task, ROOT / "evals" / "tool_picker.jsonl")
    if args.run:
        path = Path(args.run)
        model_dir = path if (path / "contract.json").is_file() else path / "model"
    elif latest_run("tool_picker", args.runs_dir) is not None:
        model_dir = latest_run("tool_picker", args.runs_dir) / "model"
    else:
        from schemabuild.train import TrainConfig, train_task

        root = Path(tempfile.mkdtemp(prefix="bench-decode-"))
        print(f"no tool_picker run found: training a tiny one under {root} (minutes on CPU)")
        model_dir = train_task(task, TrainConfig(base="tiny", eval=False), runs_dir=root) / "model"
    print(f"model: {model_dir}")
    return task, Predictor.from_model_dir(task, model_dir, device=args.device), gold


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from schemabuild.contract import messages
    from schemabuild.decode import Decoder

    torch.set_num_threads(args.threads)
    task, pred, gold = load(args)
    if args.limit:
        gold = gold[: args.limit]
    texts = [ex.input for ex in gold]
    model, tok, stop_ids = pred.decoder.model, pred.tokenizer, pred.decoder.stop_ids
    device = pred.decoder.device
    plain = Decoder(model, tok, stop_ids, device=device, jump_forward=False)
    jump = pred.decoder
    print(f"device {device}, torch threads {torch.get_num_threads()}, {len(texts)} gold inputs, "
          f"max_tokens {args.max_tokens}\n")

    def requests(constrained=True):
        reqs = [pred.request(t, max_tokens=args.max_tokens) for t in texts]
        for r in reqs:
            r.constrained = constrained
        return reqs

    def one_by_one(decoder, reqs):
        outs, secs = [], []
        for r in reqs:
            [res], s = timed(lambda: decoder.generate([r]))
            outs.append(res)
            secs.append(s)
        return outs, secs

    # warm-up: grammar compile, first-call allocations
    for d in (plain, jump):
        d.generate(requests()[:2])
        d.generate(requests(False)[:2])

    # (a) constrained vs unconstrained greedy
    free, t_free = one_by_one(plain, requests(False))
    con, t_con = one_by_one(plain, requests())
    jf, t_jf = one_by_one(jump, requests())
    same = [i for i in range(len(texts)) if free[i].text == con[i].text and free[i].finish_reason == con[i].finish_reason]
    if same:
        ratio_con = sum(t_con[i] for i in same) / sum(t_free[i] for i in same)
        ratio_jf = sum(t_jf[i] for i in same) / sum(t_free[i] for i in same)
    else:
        ratio_con = ratio_jf = float("nan")

    def per_tok(results, secs, idx):
        return 1000 * sum(secs[i] for i in idx) / max(1, sum(results[i].completion_tokens for i in idx))

    every = range(len(texts))
    print("(a) constrained vs unconstrained greedy, one request at a time")
    print(f"    same output on {len(same)}/{len(texts)} inputs (unconstrained: "
          f"{sum(r.finish_reason == 'stop' for r in free)} stopped)")
    print(f"    {'':28s}{'total s (same)':>16s}{'ms/token (all)':>16s}{'ratio vs free':>15s}")
    print(f"    {'unconstrained':28s}{sum(t_free[i] for i in same):16.3f}{per_tok(free, t_free, every):16.2f}{1.0:15.3f}")
    print(f"    {'constrained':28s}{sum(t_con[i] for i in same):16.3f}{per_tok(con, t_con, every):16.2f}{ratio_con:15.3f}")
    print(f"    {'constrained + jump-forward':28s}{sum(t_jf[i] for i in same):16.3f}{per_tok(jf, t_jf, every):16.2f}{ratio_jf:15.3f}")
    print(f"    goal constrained/unconstrained <= 1.10: {'MET' if ratio_con <= 1.10 else 'MISSED'} ({ratio_con:.3f})\n")

    # (c) forward passes per output token
    fpt = sum(r.forward_passes for r in jf) / sum(r.completion_tokens for r in jf)
    fpt_plain = sum(r.forward_passes for r in con) / sum(r.completion_tokens for r in con)
    equal = sum(a.text == b.text for a, b in zip(con, jf))
    print("(c) forward passes per output token (stop token counted as an output token)")
    print(f"    plain constrained {fpt_plain:.3f}   jump-forward {fpt:.3f}   "
          f"(jump-forward output == plain greedy output on {equal}/{len(texts)})")
    print(f"    goal <= 0.5: {'MET' if fpt <= 0.5 else 'MISSED'}\n")

    # batched throughput (for the record)
    _, t_batch = timed(lambda: [jump.generate(requests()[i:i + args.batch_size])
                                for i in range(0, len(texts), args.batch_size)])
    print(f"batched (batch {args.batch_size}, jump-forward): {t_batch:.3f} s for {len(texts)} inputs "
          f"vs {sum(t_jf):.3f} s one at a time ({sum(t_jf) / t_batch:.2f}x)\n")

    # (b) ours vs outlines.Generator
    print("(b) ours (constrained + jump-forward) vs outlines.Generator, one request at a time, greedy")
    import outlines
    from outlines.inputs import Chat
    from outlines.types import JsonSchema

    schema = pred.schema
    omodel = outlines.from_transformers(model, tok)
    ours_total = sum(t_jf)
    print(f"    {'decoder':34s}{'build s':>9s}{'total s':>9s}{'ms/token':>10s}{'same text':>11s}{'ours faster':>13s}")
    print(f"    {'ours (xgrammar, owned loop)':34s}{0.0:9.3f}{ours_total:9.3f}"
          f"{per_tok(jf, t_jf, every):10.2f}{len(texts):>8d}/{len(texts):<2d}{1.0:12.2f}x")
    headline = None
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        try:
            # outlines_core takes a whitespace rule (none, as trained); the others only their default JSON rules.
            term = JsonSchema(schema, whitespace_pattern="") if backend == "outlines_core" else JsonSchema(schema)
            gen, build = timed(lambda: outlines.Generator(omodel, term, backend=backend))
        except Exception as exc:  # noqa: BLE001 - a backend that is not installed or rejects the schema
            print(f"    outlines[{backend}]: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
            continue
        kw = dict(max_new_tokens=args.max_tokens, do_sample=False, eos_token_id=stop_ids,
                  pad_token_id=tok.pad_token_id)
        gen(Chat(messages(task.instructions, texts[0])), **kw)  # warm
        outs, secs = [], []
        for t in texts:
            out, s = timed(lambda: gen(Chat(messages(task.instructions, t)), **kw))
            outs.append(out)
            secs.append(s)
        n_tok = sum(len(tok(o, add_special_tokens=False)["input_ids"]) + 1 for o in outs)
        agree = sum(o == r.text for o, r in zip(outs, jf))
        speed = sum(secs) / ours_total
        headline = speed if backend == "outlines_core" else (headline or speed)
        print(f"    {'outlines.Generator[' + backend + ']':34s}{build:9.3f}{sum(secs):9.3f}"
              f"{1000 * sum(secs) / n_tok:10.2f}{agree:>8d}/{len(texts):<2d}{speed:12.2f}x")
    if headline is not None:
        print(f"    goal ours >= 3x faster than outlines.Generator (default backend): "
              f"{'MET' if headline >= 3 else 'MISSED'} ({headline:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
