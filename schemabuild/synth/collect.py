"""The synthesis loop: rounds of generate → label → check (→ judge) until --n pairs pass, then the train/val split."""

from __future__ import annotations

import dataclasses
import math
import random

from tqdm.auto import tqdm

from schemabuild.contract import canonical_json
from schemabuild.synth.checks import Candidate, apply_judge, check_rows
from schemabuild.synth.protocol import BudgetExceeded

MAX_ROUNDS = 5
"""Rounds of generate → label → check before giving up on reaching --n."""
OVERGENERATE = 1.3
"""Ask the teacher for this many times the missing rows (checks reject some)."""


@dataclasses.dataclass
class Outcome:
    """What the teacher loop produced."""

    candidates: list
    kept: list
    rejects: list
    complete: bool
    stop_reason: str
    surplus: int = 0


async def label_all(teacher, task, inputs: list[str], chunk: int, bar) -> list:
    """Label in chunks (a budget stop loses at most one chunk's unfinished calls); BudgetExceeded carries the rows."""
    done: list = []
    for start in range(0, len(inputs), chunk):
        part = inputs[start:start + chunk]
        try:
            rows = await teacher.label(task, part)
        except BudgetExceeded as exc:
            finished = [r for r in (exc.results or []) if r.error != "budget reached"]
            exc.results = done + finished
            raise
        done.extend(rows)
        bar.update(len(part))
    return done


async def collect(task, cfg, teacher, gold: list[str] | None, log_inputs: list[str]) -> Outcome:
    """Rounds of generate → label → check until --n pairs pass, the teacher runs dry, or the budget stops it."""
    candidates = [Candidate(ex.input, canonical_json(ex.output), "example") for ex in task.examples]
    seen = {c.input for c in candidates}
    scores: dict[str, float | None] = {}
    chunk = 10**9 if teacher.name == "batch" else max(32, cfg.concurrency * 4)
    kept, rejects, complete, stop = [], [], True, ""

    def check():
        nonlocal kept, rejects
        kept, rejects = check_rows(task, candidates, dedup_threshold=cfg.dedup_threshold, gold_inputs=gold)

    async def judge():
        nonlocal kept, rejects
        if not cfg.judge or teacher.name == "offline":
            return
        todo = [r for r in kept if r.source != "example" and r.input not in scores]
        stopped = None
        if todo:
            try:
                got = await teacher.judge(task, [(r.input, canonical_json(r.output)) for r in todo])
            except BudgetExceeded as exc:  # apply the scores that came back, then stop
                got, stopped = exc.results or [], exc
            scores.update({r.input: s for r, s in zip(todo, got) if s is not None})
        judged = [r for r in kept if r.source != "example"]
        kept_j, rejects_j = apply_judge(judged, [scores.get(r.input) for r in judged], cfg.judge_min)
        kept = [r for r in kept if r.source == "example"] + kept_j
        rejects = rejects + rejects_j
        if stopped is not None:
            raise stopped

    async def label(inputs: list[str], source: str, desc: str) -> None:
        """Label `inputs` into candidates; on a budget stop, keep what came back before re-raising."""
        rows: list = []
        with tqdm(total=len(inputs), desc=desc, unit="pair", disable=None) as bar:
            try:
                rows = await label_all(teacher, task, inputs, chunk, bar)
            except BudgetExceeded as exc:
                rows = exc.results or []
                raise
            finally:
                candidates.extend(Candidate(r.input, r.raw, source, r.error) for r in rows)

    try:
        new_logs = [x for x in log_inputs if x not in seen]
        if new_logs:
            seen.update(new_logs)
            await label(new_logs, "log", "label logged inputs")
        for rnd in range(MAX_ROUNDS):
            check()
            await judge()
            missing = cfg.n - len(kept)
            if missing <= 0:
                break
            ask = math.ceil(missing * OVERGENERATE)
            inputs = await teacher.generate_inputs(task, ask, cfg.seed + rnd)
            fresh = [x for x in inputs if x not in seen]
            if not fresh:
                stop = f"the teacher produced no new inputs in round {rnd + 1}"
                break
            seen.update(fresh)
            await label(fresh, "teacher", f"label (round {rnd + 1})")
        else:
            check()
            await judge()
            stop = f"{MAX_ROUNDS} rounds" if len(kept) < cfg.n else ""
    except BudgetExceeded as exc:
        complete, stop = False, f"budget reached ({exc})"
        check()
        try:
            await judge()
        except BudgetExceeded:
            pass
    kept, surplus = _trim(kept, cfg.n)
    return Outcome(candidates, kept, rejects, complete, stop, surplus)


def _trim(kept: list, n: int) -> tuple[list, int]:
    """(at most `n` rows, how many were dropped): every example and log row stays; teacher rows are trimmed in order."""
    if len(kept) <= n:
        return kept, 0
    fixed = [r for r in kept if r.source != "teacher"]
    room = max(0, n - len(fixed))
    synth_rows = [r for r in kept if r.source == "teacher"]
    keep = {id(r) for r in synth_rows[:room]}
    return [r for r in kept if r.source != "teacher" or id(r) in keep], max(0, len(synth_rows) - room)


def split(rows: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded train/val split; the task's own examples always go to train."""
    fixed = [r for r in rows if r.source == "example"]
    rest = [r for r in rows if r.source != "example"]
    rng = random.Random(seed)
    rng.shuffle(rest)
    n_val = round(len(rest) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(rest) >= 2:
        n_val = 1
    val, train = rest[:n_val], fixed + rest[n_val:]
    rng.shuffle(train)
    return train, val
