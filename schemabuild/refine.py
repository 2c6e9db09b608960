"""Close the loop: score the validation split, ask the teacher for pairs aimed at the weakest fields and
enum values, validate them, add them to train.jsonl, retrain, and report before/after per field.

    schemabuild train tool_picker --refine 2

Each round: evaluate on data/val.jsonl (never the gold set) → pick weak spots → teacher writes inputs that
target them (an LLM teacher is told the weak value/field in its prompt; the offline teacher recombines only
the examples with the weak values) → schemabuild.checks (parse, schema, validators, dedup, decontamination
against the gold set and the validation split) → append to train.jsonl → retrain the same run → evaluate
again. A round that makes the validation score worse is undone (model and train.jsonl restored) and ends
the loop, so refining never loses the model it started from.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path
from typing import Any

from schemabuild.contract import chat_row, split_chat_row
from schemabuild.errors import TaskError
from schemabuild.evaluate import EvalConfig, evaluate, field_pairs, primary, val_scorer, value_label
from schemabuild.evaluate.report import Report
from schemabuild.runs import Run, cache_path, gold_file, read_jsonl, write_json, write_jsonl
from schemabuild.synth import make_teacher, run_synth_config
from schemabuild.synth.checks import Candidate, check_rows, normalize
from schemabuild.task import Task, load_jsonl_examples
from schemabuild.train import train_run

WEAK_LIMIT = 3
"""Most weak spots targeted per round."""
FOCUS_HINT = "weak spots"
"""The hints key that tells a teacher what to aim at (one of its values goes into each generation prompt)."""


@dataclasses.dataclass
class WeakSpot:
    """A field (or one value of an enum field) the model gets wrong on the validation split."""
    path: str
    """The field's dotted path."""
    value: Any = None
    """For enum fields: the gold value whose rows are missed; None for the field as a whole."""
    score: float = 0.0
    """Accuracy on the validation rows concerned."""
    rows: int = 0
    """How many validation rows it was measured on."""
    def describe(self) -> str:
        if self.value is not None:
            return f"messages whose correct `{self.path}` is {self.value!r}"
        return f"messages where getting `{self.path}` exactly right is tricky"


def weak_spots(report: Report, limit: int = WEAK_LIMIT) -> list[WeakSpot]:
    """The worst enum values (by recall) and non-enum fields (by accuracy) below 1.0, worst first."""
    spots = []
    for path, f in primary(report)["fields"].items():
        if "per_value" in f:
            for value, acc in f["per_value"].items():
                if acc is not None and acc < 1.0 and value not in ("null", "(invalid)"):
                    rows = sum(f["confusion"].get(value, {}).values())
                    spots.append(WeakSpot(path, value, acc, rows))
        elif f["accuracy"] is not None and f["accuracy"] < 1.0:
            spots.append(WeakSpot(path, None, f["accuracy"], f["n"]))
    spots.sort(key=lambda s: (s.score, -s.rows))
    return spots[:limit]


def focus_task(task, spots: list[WeakSpot]):
    """The task narrowed to its weak spots: only the examples that show a weak enum value (all of them when no
    enum value is weak), and a hint naming every spot."""

    keep = []
    valued = [s for s in spots if s.value is not None]  # whole-field spots only add a hint
    for ex in task.examples:
        gold = ex.output.model_dump(mode="json")
        if any(value_label(g, None) == s.value for s in valued for _, g, _ in field_pairs(s.path, gold, gold)):
            keep.append(ex)
    hints = {**task.hints, FOCUS_HINT: [s.describe() for s in spots]}
    return Task(name=task.name, instructions=task.instructions, output=task.output, examples=keep or task.examples,
                hints=hints, validators=task.validators, fields=task.fields, source=task.source,
                student_prompt=task.student_prompt)


def _rows_key(rows) -> set[str]:

    return {normalize(split_chat_row(r)[1]) for r in rows}


def new_pairs(task, run_dir: Path, spots: list[WeakSpot], n: int, seed: int, runs_dir=None) -> tuple[list, list, str]:
    """(chat rows that passed every check and are not in train/val, rejects, teacher name) aimed at `spots`."""


    run = Run(run_dir)
    train = list(read_jsonl(run.train_file))
    val = list(read_jsonl(run.val_file)) if run.val_file.is_file() else []
    gold_path = gold_file(task)
    protected = [split_chat_row(r)[1] for r in val]  # never train on what the loop is judged on
    if gold_path.is_file():
        protected += [ex.input for ex in load_jsonl_examples(task, gold_path)]

    synth_cfg = run_synth_config(run_dir, seed=seed)
    focused = focus_task(task, spots)
    teacher = make_teacher(focused, synth_cfg, cache_path(runs_dir))

    async def ask():
        inputs = await teacher.generate_inputs(focused, n, seed)
        # An LLM teacher labels with the task's own instructions; the offline one knows its own labels.
        return await teacher.label(task if teacher.name != "offline" else focused, inputs)

    labelled = asyncio.run(ask())
    candidates = [Candidate(x.input, x.raw, "refine", x.error) for x in labelled]
    kept, rejects = check_rows(task, candidates, dedup_threshold=synth_cfg.dedup_threshold, gold_inputs=protected)
    seen = _rows_key(train)
    rows = []
    for r in kept:
        key = normalize(r.input)
        if key in seen:
            continue
        seen.add(key)
        rows.append(chat_row(task, r.input, r.output))
    return rows, rejects, teacher.name


def _field_scores(report: Report) -> dict[str, float | None]:
    m = primary(report)["metrics"]
    keys = ["schema_valid", "exact_match"] + [f"field.{p}" for p in primary(report)["fields"]]
    return {k: m.get(k) for k in keys}


def _overall(scores: dict[str, float | None]) -> float:
    vals = [v for k, v in scores.items() if k.startswith("field.") and v is not None]
    return (sum(vals) / len(vals) if vals else 0.0) + (scores.get("exact_match") or 0.0)


def before_after_table(rounds: list[dict]) -> str:
    """Per field: the score before refining, after each kept round, and the change."""
    if not rounds:
        return "refine: no rounds run"
    keys = list(rounds[0]["before"])
    width = max(len(k) for k in keys) + 2
    head = "field".ljust(width) + "before".rjust(9) + "".join(f"round {r['round']}".rjust(10) for r in rounds) + "change".rjust(9)
    lines = [head, "-" * len(head)]
    for k in keys:
        first = rounds[0]["before"][k]
        cells = []
        last = first
        for r in rounds:
            v = r["after"].get(k) if r.get("after") else None
            cells.append("-" if v is None else f"{v:.3f}")
            if r.get("kept") and v is not None:
                last = v
        delta = "" if first is None or last is None else f"{last - first:+.3f}"
        lines.append(k.ljust(width) + ("-" if first is None else f"{first:.3f}").rjust(9)
                     + "".join(c.rjust(10) for c in cells) + delta.rjust(9))
    return "\n".join(lines)


def refine(task, run_dir, train_cfg, rounds: int, runs_dir=None, per_round: int | None = None) -> dict:
    """Up to `rounds` rounds of evaluate(val) → targeted pairs → retrain; returns (and saves) the before/after report.

    Writes `<run>/refine/report.json` and `round-<k>/{before,after}/` eval reports and `added.jsonl`.
    """

    run_dir = Path(run_dir)
    run = Run(run_dir)
    val = run.val_file
    if not val.is_file() or not val.stat().st_size:
        raise TaskError(f"--refine: {val} is empty; refining needs a validation split (synthesize with --val-fraction > 0)")
    out = run.refine
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    seed = getattr(train_cfg, "seed", 0)

    def score_val(dest: Path) -> dict:
        return evaluate(task, EvalConfig(run=str(run_dir), data=val, out=dest), runs_dir, quiet=True)

    before = score_val(out / "round-1" / "before")
    for k in range(1, rounds + 1):
        rdir = out / f"round-{k}"
        scores = _field_scores(before)
        spots = weak_spots(before)
        entry: dict[str, Any] = {"round": k, "before": scores, "weak": [dataclasses.asdict(s) for s in spots]}
        history.append(entry)
        if not spots:
            entry["stopped"] = "every field is right on the validation split"
            print(f"refine round {k}: nothing to refine, every field is right on {val}")
            break
        train_rows = list(read_jsonl(run.train_file))
        n = per_round or max(16, len(train_rows) // 4)
        print(f"refine round {k}: weakest " + "; ".join(
            f"{s.path}={s.value!r} {s.score:.2f}" if s.value is not None else f"{s.path} {s.score:.2f}" for s in spots))
        rows, rejects, teacher = new_pairs(task, run_dir, spots, n, seed=seed + 1000 * k, runs_dir=runs_dir)
        entry.update({"teacher": teacher, "added": len(rows), "rejected": len(rejects)})
        write_jsonl(rdir / "added.jsonl", rows)
        if not rows:
            entry["stopped"] = "the teacher produced no new valid pairs for the weak spots"
            print(f"refine round {k}: the teacher produced no new valid pairs ({len(rejects)} rejected); stopping")
            break
        # keep what we have, so a worse round can be undone
        backup = rdir / "previous"
        if backup.exists():
            shutil.rmtree(backup)
        backup.mkdir(parents=True)
        shutil.copy2(run.train_file, backup / run.train_file.name)
        shutil.copytree(run.model, backup / "model")
        write_jsonl(run.train_file, train_rows + rows)
        print(f"refine round {k}: +{len(rows)} pairs from the {teacher} teacher ({len(rejects)} rejected); retraining")
        train_run(task, run_dir, dataclasses.replace(train_cfg, resume=False),
                  validator=val_scorer(task, run_dir, train_cfg.val_rows))
        after = score_val(rdir / "after")
        entry["after"] = _field_scores(after)
        if _overall(entry["after"]) < _overall(scores):
            shutil.rmtree(run.model)
            shutil.copytree(backup / "model", run.model)
            shutil.copy2(backup / run.train_file.name, run.train_file)
            entry["kept"] = False
            entry["stopped"] = "the validation score dropped; restored the previous model and train.jsonl"
            print(f"refine round {k}: validation score dropped; restored the previous model and stopped")
            break
        entry["kept"] = True
        shutil.rmtree(backup / "model")
        before = after
    table = before_after_table(history)
    report = {"task": task.name, "run": str(run_dir), "data": str(val), "rounds": history, "table": table}
    write_json(out / "report.json", report)
    print(table)
    return report
