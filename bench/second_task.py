"""The second task (tasks/meeting_invite.py) end to end, with a perfect teacher or with no teacher at all.

    HF_HUB_OFFLINE=1 python bench/second_task.py truth   --n 800            # truth server -> synth -> train -> eval
    HF_HUB_OFFLINE=1 python bench/second_task.py offline --n 800            # no teacher: the offline generator
    HF_HUB_OFFLINE=1 python bench/second_task.py offline --n 300 --train-args "--lora-layers 8"   # what fit here
    HF_HUB_OFFLINE=1 python bench/second_task.py tool_picker --n 800       # the README's main job, three sets

Each run goes through the CLI as a user would (`schemabuild synth`, `schemabuild train --no-eval`, `schemabuild
eval --data`), in its own runs folder. `truth` points OPENAI_BASE_URL at tests/truth_teacher.py's loopback server,
which never writes a held-out or dev text (checked again here on train.jsonl by text). Scores are printed for the
held-out rows (evals/meeting_invite.jsonl, measured, never tuned on) and for 80 dev rows written from a third
seed of the truth generator (bench-only; the one set the generator may be tuned on). `tool_picker` trains with the
defaults and only prints scores on evals/tool_picker.jsonl, evals/dev/ and evals/holdout/ (never their rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOOL_PICKER_SETS = {"gold": "evals/tool_picker.jsonl", "dev": "evals/dev/tool_picker.jsonl",
                    "holdout": "evals/holdout/tool_picker.jsonl"}


def cli(*args: str, env: dict | None = None) -> float:
    """Run `schemabuild ARGS` (nice'd); the wall seconds it took. Raises when it fails."""
    start = time.perf_counter()
    subprocess.run(["nice", "-n", "10", sys.executable, "-m", "schemabuild", *args], check=True, cwd=ROOT,
                   env={**os.environ, **(env or {})})
    return time.perf_counter() - start


def texts_of(path: Path) -> set[str]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {r["input"] if "input" in r else r["messages"][-2]["content"] for r in rows}


def score(task: str, runs: Path, data: Path, name: str) -> dict:
    out = runs / f"eval_{name}"
    subprocess.run([sys.executable, "-m", "schemabuild", "eval", task, "--runs-dir", str(runs), "--data", str(data),
                    "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL)  # exit code is the gate: ignored
    return json.loads((out / "report.json").read_text())["models"]["finetuned"]["metrics"]


def print_scores(scores: dict[str, dict]) -> None:
    names = sorted({k for m in scores.values() for k in m if k == "exact_match" or k.startswith("field.")})
    print("metric".ljust(26) + "".join(s.rjust(10) for s in scores))
    for n in names:
        cells = [m.get(n) if isinstance(m.get(n), (int, float)) else float("nan") for m in scores.values()]
        print(n.ljust(26) + "".join(f"{v:10.3f}" for v in cells))


def second_task(args, runs: Path) -> None:
    from tests.truth_teacher import TruthServer, write_rows

    heldout = ROOT / "evals" / "meeting_invite.jsonl"
    dev = runs / "dev_meeting_invite.jsonl"
    exclude = texts_of(heldout)
    dev.write_text("".join(json.dumps(r) + "\n" for r in write_rows("dev", 80, exclude)))
    exclude |= texts_of(dev)
    env, server = {}, None
    if args.teacher == "truth":
        server = TruthServer("train", exclude=exclude).start()
        env = {"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "truth"}
    else:
        for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
            os.environ.pop(var, None)
    try:
        t_synth = cli("synth", "meeting_invite", "--n", str(args.n), "--runs-dir", str(runs), env=env)
    finally:
        if server is not None:
            server.stop()
    run = (runs / "meeting_invite" / "latest").resolve()
    train_texts = texts_of(run / "data" / "train.jsonl") | texts_of(run / "data" / "val.jsonl")
    print(f"synth: {len(train_texts)} rows in {t_synth:.0f} s; overlap with held-out {len(train_texts & texts_of(heldout))}, "
          f"with dev {len(train_texts & texts_of(dev))} (by text)")
    print("manifest note:", json.loads((run / "data" / "manifest.json").read_text()).get("teacher", {}))
    extra = (["--epochs", str(args.epochs)] if args.epochs else []) + args.train_args.split()
    t_train = cli("train", "meeting_invite", "--runs-dir", str(runs), "--run", str(run), "--no-eval", *extra)
    print(f"train: {t_train:.0f} s (contended 2-core CPU)")
    print_scores({"heldout": score("meeting_invite", runs, heldout, "heldout"),
                  "dev": score("meeting_invite", runs, dev, "dev")})


def tool_picker(args, runs: Path) -> None:
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        os.environ.pop(var, None)
    extra = (["--epochs", str(args.epochs)] if args.epochs else []) + args.train_args.split()
    t = cli("train", "tool_picker", "--runs-dir", str(runs), "--n", str(args.n), "--no-eval", *extra)
    print(f"main job (synth + train, no eval): {t:.0f} s (contended 2-core CPU)")
    print_scores({name: score("tool_picker", runs, ROOT / path, name) for name, path in TOOL_PICKER_SETS.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher", choices=["truth", "offline", "tool_picker"])
    parser.add_argument("--n", type=int, default=800)
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--train-args", default="", help='more `schemabuild train` flags, e.g. "--lora-layers 8"')
    args = parser.parse_args()
    runs = args.runs_dir or Path("/tmp/schemabuild-bench") / f"{args.teacher}-n{args.n}-e{args.epochs or 'default'}{args.train_args.replace(' ', '')}"
    runs.mkdir(parents=True, exist_ok=True)
    (tool_picker if args.teacher == "tool_picker" else second_task)(args, runs)


if __name__ == "__main__":
    main()
