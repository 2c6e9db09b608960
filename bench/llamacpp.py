"""Our `/predict` vs llama.cpp (Q8_0, JSON-schema grammar) on the same merged model, messages and schema, interleaved.

    python bench/llamacpp.py --run runs/tool_picker/<run-id>
    python bench/llamacpp.py --run <run> --precisions auto,fp32 --threads 1 --repeat 2
    python bench/llamacpp.py --run <run> --speculate on,off --limit 20     # prompt-lookup speculation on and off
    python bench/llamacpp.py --run <run> --engines torch,llamacpp          # our server on each engine (the default)

Prerequisites (the script stops with one line naming what is missing):
- llama-cpp-python importable (`pip install --no-deps llama_cpp_python-*.whl`; build it from the registry's
  source release with `CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF
  -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"`: on a VM that reports AMX, `-march=native` builds died with SIGILL);
- llama.cpp's own converter: `--llama-src` = the llama-cpp-python sdist (.tar.gz) or an unpacked llama.cpp folder
  (its `convert_hf_to_gguf.py` and `gguf-py/` are used, not ours);
- `sentencepiece` importable (the converter imports it).

What runs, in one process and one run:
1. the run's model merged (`schemabuild export --format merged`, cached under the run) and converted by llama.cpp's
   `convert_hf_to_gguf.py --outtype q8_0` (cached);
2. one real `schemabuild serve` per `--precisions` entry and `--speculate` entry on 127.0.0.1 (OMP_NUM_THREADS =
   --threads) for `--engines torch`, and one per `--speculate` entry for `--engines llamacpp` (`serve --engine
   llamacpp`: our decoding on llama.cpp's forward pass over the run's Q8_0 GGUF from our own writer,
   <run>/gguf/, written by the server on first use; --precisions does not apply);
3. llama.cpp in this process (`n_threads` = --threads), fed the SAME prompt token ids our contract renders
   (system = the student prompt, user = the message) and a grammar from the SAME JSON schema
   (`LlamaGrammar.from_json_schema`), greedy, `max_tokens` alike;
4. for every message of the gold set, each side answers once (`--repeat` times, fastest kept) before the next
   message: load from other jobs on a shared machine hits both alike. llama.cpp runs in-process (no HTTP), our side
   through HTTP: the comparison leans toward llama.cpp, not toward us.
Printed: p50 per side, ratio ours / llama.cpp (goal <= 0.5), tool accuracy per side, answers identical across sides,
and with both engines, each llamacpp-engine side's p50 over the torch side's with the same --speculate.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "bench" / "serve.py")
bench_serve = importlib.util.module_from_spec(_spec)  # bench/serve.py: the real server as its own process
_spec.loader.exec_module(bench_serve)
DEFAULT_SRC = Path("/work/wheels/src/llama_cpp_python-0.3.36.tar.gz")
GOAL = 0.5


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a tool_picker run directory [default: the latest run]")
    ap.add_argument("--runs-dir", default=None, help="runs root for the default run")
    ap.add_argument("--llama-src", type=Path, default=DEFAULT_SRC,
                    help="llama-cpp-python sdist (.tar.gz) or a llama.cpp folder holding convert_hf_to_gguf.py")
    ap.add_argument("--gguf", type=Path, default=None, help="use this GGUF instead of converting")
    ap.add_argument("--precisions", default="auto", help="our server's --precision values, one server each")
    ap.add_argument("--speculate", default="on", help="on, off or on,off: our server's --speculate / --no-speculate "
                    "(one server each, for every precision)")
    ap.add_argument("--engines", default="torch,llamacpp", help="our server's --engine values: torch, llamacpp or "
                    "torch,llamacpp (one server per engine, precision and speculate mode; precision: torch only)")
    ap.add_argument("--threads", type=int, default=1, help="threads for both sides")
    ap.add_argument("--limit", type=int, default=0, help="first N gold messages (0 = all 56)")
    ap.add_argument("--repeat", type=int, default=1, help="tries per message and side; the fastest is kept")
    ap.add_argument("--max-tokens", type=int, default=96)
    return ap.parse_args(argv)


def need(module: str, how: str):
    """Import `module`, or exit with one line saying how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SystemExit(f"bench/llamacpp.py needs {module} ({exc}); {how}") from None


def converter(src: Path) -> Path:
    """llama.cpp's convert_hf_to_gguf.py, unpacked from the sdist once (under ~/.cache/schemabuild/llamacpp-src)."""
    if src.is_dir():
        found = next(src.rglob("convert_hf_to_gguf.py"), None)
    elif src.is_file() and src.name.endswith(".tar.gz"):
        dest = Path.home() / ".cache" / "schemabuild" / "llamacpp-src" / src.name[: -len(".tar.gz")]
        if not dest.is_dir():
            with tarfile.open(src) as tar:
                members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name
                           and ("/gguf-py/" in m.name or "/conversion/" in m.name or m.name.endswith("convert_hf_to_gguf.py"))]
                tar.extractall(dest, members=members, filter="data")
        found = next(dest.rglob("convert_hf_to_gguf.py"), None)
    else:
        found = None
    if found is None:
        raise SystemExit(f"--llama-src {src}: no llama.cpp convert_hf_to_gguf.py there (give the llama-cpp-python "
                         "sdist .tar.gz or a llama.cpp checkout)")
    return found


def q8_gguf(task, run: Path, src: Path) -> Path:
    """The run's model merged and converted to Q8_0 by llama.cpp's own converter (both cached under the run)."""
    from schemabuild.train import export_merged

    merged = run / "exports" / "merged"
    if not (merged / "model.safetensors").is_file():
        export_merged(task, run, merged)
    out = run / "exports" / "llamacpp-q8_0.gguf"
    if not out.is_file():
        need("sentencepiece", "pip install sentencepiece (llama.cpp's converter imports it)")
        script = converter(src)
        print(f"converting with {script} --outtype q8_0", flush=True)
        done = subprocess.run([sys.executable, str(script), str(merged), "--outtype", "q8_0", "--outfile", str(out)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"convert_hf_to_gguf.py failed: {done.stderr.strip().splitlines()[-1:]}")
    return out


def llama_side(gguf: Path, threads: int, schema: dict, max_tokens: int):
    """A function prompt ids -> (answer text, seconds) on llama.cpp with the schema's grammar, greedy."""
    llama_cpp = need("llama_cpp", "pip install --no-deps the llama_cpp_python wheel (see this file's docstring)")
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                          verbose=False, seed=0)
    grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    info = llama_cpp.llama_print_system_info().decode()
    print(f"llama.cpp {llama_cpp.__version__}: {info.strip()}")
    if "AVX2 = 1" not in info and "AVX2" in info:
        print("warning: this llama.cpp build has no AVX2 kernels: it is slower than a normal build")

    def answer(prompt_ids: list[int]) -> tuple[str, float]:
        t0 = time.perf_counter()
        out = llm.create_completion(prompt=prompt_ids, grammar=grammar, temperature=0.0, top_k=1,
                                    max_tokens=max_tokens, seed=0)
        return out["choices"][0]["text"], time.perf_counter() - t0

    return answer


def our_side(url: str, task_name: str):
    import httpx

    client = httpx.Client(base_url=url, timeout=120)

    def answer(text: str) -> tuple[str, float]:
        t0 = time.perf_counter()
        r = client.post(f"/v1/tasks/{task_name}/predict", json={"input": text})  # greedy is the route's default
        secs = time.perf_counter() - t0
        if r.status_code == 422:  # cut off at max_tokens: no answer, as llama.cpp's cut-off text does not parse
            return "", secs
        if r.status_code != 200:
            raise SystemExit(f"/predict answered {r.status_code}: {r.text[:200]}")
        return json.dumps(r.json()["output"]), secs

    return answer


def parse(task, text: str):
    try:
        return task.output.model_validate_json(text).model_dump()
    except ValueError:
        return None


def main(argv=None) -> None:
    args = parse_args(argv)
    from schemabuild.contract import encode_prompt, grammar_schema, system_prompt, load_contract
    from schemabuild.runs import latest_run
    from schemabuild.task import load_jsonl_examples, load_task

    need("llama_cpp", "pip install --no-deps the llama_cpp_python wheel (see this file's docstring)")
    task = load_task("tool_picker", ROOT / "tasks")
    run = Path(args.run) if args.run else latest_run("tool_picker", args.runs_dir)
    if run is None or not (run / "model" / "contract.json").is_file():
        raise SystemExit("no trained tool_picker run: run `schemabuild train tool_picker` or give --run")
    gold = load_jsonl_examples(task, ROOT / "evals" / "tool_picker.jsonl")
    gold = gold[: args.limit] if args.limit else gold
    gguf = args.gguf or q8_gguf(task, run, args.llama_src)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "model")
    contract = load_contract(run / "model")
    schema = grammar_schema(task.output)
    prompts = [encode_prompt(tok, system_prompt(task, contract), ex.input) for ex in gold]
    sides = {"llama.cpp Q8_0": llama_side(gguf, args.threads, schema, args.max_tokens)}
    servers = []
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    try:
        for name, flags in server_setups(args):
            port = bench_serve.free_port()
            servers.append(bench_serve.start_server(
                run, port, max_batch=32, window_ms=3.0,
                extra=[*flags, "--max-tokens-cap", str(args.max_tokens),
                       "--compile-timeout-s", "300",  # a loaded box: no 400 on warm-up
                       "--default-max-tokens", str(args.max_tokens)]))
            sides[f"ours /predict ({name})"] = our_side(f"http://127.0.0.1:{port}", task.name)
        measure(task, gold, prompts, sides, args)
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(timeout=30)


def server_setups(args) -> list[tuple[str, list[str]]]:
    """(side name, serve flags) of each of our servers: every engine x (torch: precision) x speculate mode."""
    modes = [m.strip() for m in args.speculate.split(",") if m.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not modes or not set(modes) <= {"on", "off"}:
        raise SystemExit(f"--speculate {args.speculate}: expected on, off or on,off")
    if not engines or not set(engines) <= {"torch", "llamacpp"}:
        raise SystemExit(f"--engines {args.engines}: expected torch, llamacpp or torch,llamacpp")
    setups = []
    for engine in engines:
        precisions = [p.strip() for p in args.precisions.split(",") if p.strip()] if engine == "torch" else ["Q8_0"]
        for precision in precisions:
            for mode in modes:
                flags = ["--engine", engine, "--speculate" if mode == "on" else "--no-speculate"]
                flags += ["--precision", precision] if engine == "torch" else []
                name = precision if engine == "torch" else "llamacpp engine, Q8_0"
                setups.append((name if modes == ["on"] else f"{name}, speculate {mode}", flags))
    return setups


def measure(task, gold, prompts, sides: dict, args) -> None:
    inputs = {name: (prompts if name.startswith("llama") else [ex.input for ex in gold]) for name in sides}
    for name, fn in sides.items():  # warm-up: grammar compile, first allocations
        fn(inputs[name][0])
    answers = {n: [] for n in sides}
    secs = {n: [] for n in sides}
    for i in range(len(gold)):  # interleaved: every side answers message i before any answers message i+1
        for name, fn in sides.items():
            best, text = float("inf"), ""
            for _ in range(args.repeat):
                text, s = fn(inputs[name][i])
                best = min(best, s)
            answers[name].append(parse(task, text))
            secs[name].append(best)
    ref = next(iter(sides))
    p50_ref = statistics.median(secs[ref]) * 1000
    print(f"\n{len(gold)} gold messages, one request at a time, greedy, {args.threads} thread(s) each, "
          f"fastest of {args.repeat}")
    print(f"  {'side':40s}{'p50 ms':>9s}{'p90 ms':>9s}{'vs llama.cpp':>14s}{'tool acc':>10s}{'same answer':>13s}")
    for name in sides:
        ms = sorted(s * 1000 for s in secs[name])
        p50, p90 = statistics.median(ms), ms[int(0.9 * (len(ms) - 1))]
        tool = sum(a is not None and a["tool"] == ex.output.tool for a, ex in zip(answers[name], gold)) / len(gold)
        same = sum(a == b for a, b in zip(answers[name], answers[ref]))
        print(f"  {name:40s}{p50:9.1f}{p90:9.1f}{p50 / p50_ref:13.2f}x{tool:10.3f}{same:>9d}/{len(gold)}")
    for name in sides:
        if name != ref:
            ratio = statistics.median(secs[name]) * 1000 / p50_ref
            print(f"goal {name} p50 <= {GOAL}x llama.cpp Q8_0: {'MET' if ratio <= GOAL else 'MISSED'} ({ratio:.2f}x)")
    p50 = {name: statistics.median(s) * 1000 for name, s in secs.items()}
    for name in [n for n in sides if "llamacpp engine" in n]:
        mode = name.split("speculate")[-1] if "speculate" in name else None
        torch_sides = [n for n in sides if n.startswith("ours") and "llamacpp engine" not in n
                       and (mode is None or n.endswith(f"speculate{mode}"))]
        for other in torch_sides:
            print(f"{name} p50 / {other} p50: {p50[name] / p50[other]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
