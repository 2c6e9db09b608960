"""Decoding benchmarks, measured side by side in one run on a trained tool_picker model and its gold set.

    python bench/decode.py --run runs/tool_picker/<run-id>        # a trained run (or its model/ folder)
    python bench/decode.py                                        # the latest tool_picker run, else trains a tiny one

(a) constrained vs unconstrained greedy latency, over the inputs where both give the same output (goal ≤ 1.10)
(b) our decoder vs `outlines.Generator` (transformers wrapper, built once per schema and warmed), one request
    at a time on the gold set (goal ≥ 3× faster); every installed outlines backend is timed, so the numbers also
    say why we drive xgrammar ourselves. Both get the SAME prompt: the model's contract prompt (the student system
    line + the message, through the chat template), checked token for token before timing; ours is also timed
    without prefix reuse, so the gap from reusing the system prompt's KV is shown apart from the rest
(c) forward passes per output token with jump-forward (goal ≤ 0.5)
"""

from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--precision", default="fp32", help="weights for every method alike: fp32, bf16, int8, auto")
    ap.add_argument("--backends", default="outlines_core,xgrammar,llguidance",
                    help="outlines backends to time (those not installed are skipped)")
    ap.add_argument("--batch-size", type=int, default=16, help="batch size for the batched-throughput line")
    ap.add_argument("--repeat", type=int, default=3, help="runs per input and method; the fastest is kept")
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
        from schemabuild.pipeline import PipelineConfig, train_task

        root = Path(tempfile.mkdtemp(prefix="bench-decode-"))
        print(f"no tool_picker run found: training a tiny one under {root} (minutes on CPU)")
        model_dir = train_task(task, PipelineConfig(base="tiny", eval=False), runs_dir=root) / "model"
    print(f"model: {model_dir}")
    return task, Predictor.from_model_dir(task, model_dir, device=args.device, precision=args.precision), gold


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from schemabuild.contract import encode_prompt, messages, system_prompt
    from schemabuild.inference.decoder import Decoder

    torch.set_num_threads(args.threads)
    task, pred, gold = load(args)
    if args.limit:
        gold = gold[: args.limit]
    texts = [ex.input for ex in gold]
    model, tok, stop_ids = pred.decoder.model, pred.tokenizer, pred.decoder.stop_ids
    device = pred.decoder.device
    plain = Decoder(model, tok, stop_ids, device=device, jump_forward=False)
    jump = pred.decoder
    no_reuse = Decoder(model, tok, stop_ids, device=device, prefix_cache=0)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {len(texts)} gold inputs, "
          f"max_tokens {args.max_tokens}\n")

    def requests(constrained=True):
        reqs = [pred.request(t, max_tokens=args.max_tokens) for t in texts]
        for r in reqs:
            r.constrained = constrained
        return reqs

    # Every method runs on input i before any runs on input i+1, each `--repeat` times (fastest kept), so
    # load from other processes on a shared machine hits all methods alike.
    import outlines
    from outlines.inputs import Chat
    from outlines.types import JsonSchema

    free_reqs, con_reqs = requests(False), requests()
    methods = {
        "unconstrained": lambda i: plain.generate([free_reqs[i]])[0],
        "constrained": lambda i: plain.generate([con_reqs[i]])[0],
        "constrained + jump-forward": lambda i: jump.generate([con_reqs[i]])[0],
        "jump-forward, no prefix reuse": lambda i: no_reuse.generate([con_reqs[i]])[0],
    }
    builds = {}
    omodel = outlines.from_transformers(model, tok)
    # outlines gets exactly our prompt: the contract's system prompt (the student line for a tuned model), the same
    # chat template; checked token for token through outlines' own formatting and encoding, so the comparison is of
    # decoders, not of prompt lengths.
    system = system_prompt(task, pred.contract)
    for i, t in enumerate(texts):
        theirs, _ = omodel.tokenizer.encode(omodel.type_adapter.format_input(Chat(messages(system, t))))
        if theirs[0].tolist() != encode_prompt(tok, system, t) or theirs[0].tolist() != con_reqs[i].prompt_ids:
            raise SystemExit(f"input {i}: the outlines prompt differs from ours; the comparison would not be fair")
    print(f"prompt: the contract's system prompt for both ({len(con_reqs[0].prompt_ids)} tokens on input 0)\n")
    kw = dict(max_new_tokens=args.max_tokens, do_sample=False, eos_token_id=stop_ids, pad_token_id=tok.pad_token_id)
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        # outlines_core takes a whitespace rule (none, as trained); the others only their default JSON rules.
        term = JsonSchema(pred.schema, whitespace_pattern="") if backend == "outlines_core" else JsonSchema(pred.schema)
        try:
            gen, builds[backend] = timed(lambda: outlines.Generator(omodel, term, backend=backend))
        except Exception as exc:  # noqa: BLE001 - a backend that is not installed or rejects the schema
            print(f"outlines[{backend}]: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
            continue
        methods[f"outlines.Generator[{backend}]"] = (
            lambda i, gen=gen: gen(Chat(messages(system, texts[i])), **kw))

    for fn in methods.values():  # warm-up: grammar compile, first-call allocations
        fn(0)
    outs = {m: [] for m in methods}
    secs = {m: [] for m in methods}
    for i in range(len(texts)):
        for m, fn in methods.items():
            best = float("inf")
            for _ in range(args.repeat):
                out, s = timed(lambda: fn(i))
                best = min(best, s)
            outs[m].append(out)
            secs[m].append(best)

    def n_tokens(m):
        if m.startswith("outlines"):  # + 1 for the stop token, as our counts include it
            return sum(len(tok(o, add_special_tokens=False)["input_ids"]) + 1 for o in outs[m])
        return sum(r.completion_tokens for r in outs[m])

    def text(m, i):
        o = outs[m][i]
        return o if isinstance(o, str) else o.text

    free, con, jf = outs["unconstrained"], outs["constrained"], outs["constrained + jump-forward"]
    t_free, t_con, t_jf = secs["unconstrained"], secs["constrained"], secs["constrained + jump-forward"]

    # (a) constrained vs unconstrained greedy
    same = [i for i in range(len(texts)) if free[i].text == con[i].text and free[i].finish_reason == con[i].finish_reason]
    nan = float("nan")
    ratio_con = sum(t_con[i] for i in same) / sum(t_free[i] for i in same) if same else nan
    ratio_jf = sum(t_jf[i] for i in same) / sum(t_free[i] for i in same) if same else nan
    print("(a) constrained vs unconstrained greedy, one request at a time")
    print(f"    same output on {len(same)}/{len(texts)} inputs (unconstrained: "
          f"{sum(r.finish_reason == 'stop' for r in free)} stopped)")
    print(f"    {'':28s}{'total s (same)':>16s}{'ms/token (all)':>16s}{'ratio vs free':>15s}")
    for m, ratio in [("unconstrained", 1.0), ("constrained", ratio_con), ("constrained + jump-forward", ratio_jf)]:
        print(f"    {m:28s}{sum(secs[m][i] for i in same):16.3f}{1000 * sum(secs[m]) / n_tokens(m):16.2f}{ratio:15.3f}")
    print(f"    goal constrained/unconstrained <= 1.10: {'MET' if ratio_con <= 1.10 else 'MISSED'} ({ratio_con:.3f}); "
          f"with jump-forward {ratio_jf:.3f}\n")

    # (c) forward passes per output token
    fpt = sum(r.forward_passes for r in jf) / n_tokens("constrained + jump-forward")
    equal = sum(a.text == b.text for a, b in zip(con, jf))
    print("(c) forward passes per output token (the stop token counted as an output token)")
    print(f"    plain constrained {sum(r.forward_passes for r in con) / n_tokens('constrained'):.3f}   "
          f"jump-forward {fpt:.3f}   (jump-forward output == plain constrained greedy on {equal}/{len(texts)})")
    print(f"    goal <= 0.5: {'MET' if fpt <= 0.5 else 'MISSED'}\n")

    # (b) ours vs outlines.Generator
    ours = "constrained + jump-forward"
    print("(b) ours (constrained + jump-forward) vs outlines.Generator, one request at a time, greedy")
    print(f"    {'decoder':34s}{'build s':>9s}{'total s':>9s}{'ms/token':>10s}{'same text':>11s}{'ours faster':>13s}")
    headline = None
    for m in [ours, "jump-forward, no prefix reuse", "constrained"] + [m for m in methods if m.startswith("outlines")]:
        backend = m[m.find("[") + 1:-1] if m.startswith("outlines") else None
        agree = sum(text(m, i) == jf[i].text for i in range(len(texts)))
        speed = sum(secs[m]) / sum(secs[ours])
        if backend == "outlines_core" or (backend and headline is None):
            headline = speed
        label = {"constrained": "ours, no jump-forward", ours: "ours (jump-forward)",
                 "jump-forward, no prefix reuse": "ours, no prefix reuse"}.get(m, m)
        print(f"    {label:34s}{builds.get(backend, 0.0):9.3f}{sum(secs[m]):9.3f}{1000 * sum(secs[m]) / n_tokens(m):10.2f}"
              f"{agree:>8d}/{len(texts):<2d}{speed:12.2f}x")
    if headline is not None:
        print(f"    goal ours >= 3x faster than outlines.Generator (default backend outlines_core): "
              f"{'MET' if headline >= 3 else 'MISSED'} ({headline:.2f}x)\n")

    # batched throughput (for the record)
    _, t_batch = timed(lambda: [jump.generate(con_reqs[i:i + args.batch_size])
                                for i in range(0, len(texts), args.batch_size)])
    print(f"batched (batch {args.batch_size}, jump-forward): {t_batch:.3f} s for {len(texts)} inputs "
          f"vs {sum(t_jf):.3f} s one at a time ({sum(t_jf) / t_batch:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
