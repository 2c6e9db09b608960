"""Synthesize a validated training set: setup → generate → label → check → split → save.

    schemabuild synth tool_picker                  # offline without OPENAI_API_KEY / OPENAI_BASE_URL
    OPENAI_API_KEY=... schemabuild synth tool_picker --n 2000 --budget-usd 1

Writes `runs/<task>/<run-id>/data/`: train.jsonl and val.jsonl (OpenAI chat format, assistant = canonical
JSON), rejects.jsonl (input, raw, stage, reason), manifest.json (counts, reasons, teacher, cost, hashes).
Every teacher call is cached, so a killed run, rerun, repeats none of its finished calls and writes the
same rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import click

from schemabuild.config import ConfigError, resolved
from schemabuild.contract import chat_row
from schemabuild.errors import TaskError
from schemabuild.runs import Run, cache_path, gold_file, latest_run, new_run, runs_root, set_latest, write_json, write_jsonl
from schemabuild.synth.checks import count_reasons, overlap_report
from schemabuild.synth.collect import MAX_ROUNDS, collect, split
from schemabuild.synth.teachers import expected_teacher, make_teacher
from schemabuild.task import load_jsonl_examples


@dataclasses.dataclass
class SynthConfig:
    """Settings of `schemabuild synth` (each field is a CLI flag)."""

    n: int = 800
    """How many training pairs to aim for (the task's examples included). 800: one LoRA epoch over them fits the
    main job's CPU budget (BENCHMARKS.md "Real base")."""
    seed: int = 0
    """Random seed for input generation and the train/val split."""
    teacher_model: str = "gpt-4o-mini"
    """Teacher model name at OPENAI_BASE_URL (ignored by the offline teacher)."""
    concurrency: int = 16
    """Teacher calls in flight at once."""
    timeout: float = 60.0
    """Seconds before one teacher call is abandoned and retried."""
    max_retries: int = 5
    """Retries per teacher call on 429, 5xx, timeouts and dropped connections."""
    budget_usd: float | None = None
    """Stop calling the teacher once this many USD are spent; what was labelled so far is saved."""
    price_in: float | None = None
    """USD per 1M prompt tokens (default: the known price of --teacher-model)."""
    price_out: float | None = None
    """USD per 1M completion tokens (default: the known price of --teacher-model)."""
    batch: bool = False
    """Label through the OpenAI Batch API (half price, slower)."""
    batch_poll_s: float = 10.0
    """Seconds between Batch API status polls."""
    judge: bool = False
    """Have the teacher score every kept pair 1-5 and drop those under --judge-min."""
    judge_min: float = 3.0
    """Lowest judge score kept (1-5)."""
    val_fraction: float = 0.1
    """Share of synthesized pairs held out as val.jsonl."""
    dedup_threshold: float = 0.9
    """Jaccard similarity of character 5-gram shingles at which two inputs are near-duplicates (also the
    overlap at which an input counts as contaminated by a gold eval input)."""
    decontaminate: bool = True
    """Drop pairs whose input matches or overlaps an input of the gold eval set."""
    eval_file: str | None = None
    """Gold eval set to decontaminate against [default: evals/<task>.jsonl next to the tasks folder]."""
    from_log: str | None = None
    """OpenAI chat JSONL of logged requests: their last user messages become extra inputs to label."""
    run: str | None = None
    """Run directory or run id to write into [default: a new run, or the latest run if its synth was cut short]."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError("--n: must be at least 1")
        if self.concurrency < 1:
            raise ConfigError("--concurrency: must be at least 1")
        if self.timeout <= 0:
            raise ConfigError("--timeout: must be positive (seconds)")
        if self.max_retries < 0:
            raise ConfigError("--max-retries: must be 0 or more")
        for name in ("budget_usd", "price_in", "price_out"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be 0 or more")
        if self.batch_poll_s <= 0:
            raise ConfigError("--batch-poll-s: must be positive (seconds)")
        if not 1 <= self.judge_min <= 5:
            raise ConfigError("--judge-min: must be between 1 and 5")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("--val-fraction: must be in [0, 1)")
        if not 0 < self.dedup_threshold <= 1:
            raise ConfigError("--dedup-threshold: must be in (0, 1]")
        if not self.teacher_model or not self.teacher_model.strip():
            raise ConfigError("--teacher-model: must not be empty")
        if self.from_log is not None and not Path(self.from_log).is_file():
            raise ConfigError(f"--from-log: no such file {self.from_log}")
        if self.eval_file is not None and not Path(self.eval_file).is_file():
            raise ConfigError(f"--eval-file: no such file {self.eval_file}")


# ---- setup helpers ---------------------------------------------------------------------------------

def gold_inputs(task, cfg: SynthConfig) -> tuple[list[str] | None, Path | None]:
    """(gold inputs, their file) to decontaminate against; (None, None) when there is none or it is off."""
    if not cfg.decontaminate:
        return None, None
    path = Path(cfg.eval_file) if cfg.eval_file else gold_file(task)
    if not path.is_file():
        return None, None
    return [ex.input for ex in load_jsonl_examples(task, path)], path


def gold_overlap(task, train_inputs: list[str], gold_path: Path | None) -> dict:
    """`checks.overlap_report` of the training inputs against the gold set and any dev sets (evals/*/<task>.jsonl)."""
    paths = [gold_path] if gold_path else []
    default = gold_file(task)
    if default.parent.is_dir():
        paths += sorted(default.parent.glob(f"*/{task.name}.jsonl"))
    out = {}
    for path in paths:
        try:
            gold = [ex.input for ex in load_jsonl_examples(task, path)]
        except (TaskError, OSError, UnicodeDecodeError):
            continue  # a broken dev set is reported by `schemabuild eval`, not here
        out[str(path)] = overlap_report(train_inputs, gold)
    return out


def read_log_inputs(path: str | os.PathLike) -> list[str]:
    """The last user message of each logged chat request (a body, {"body": ...} or {"request": ...})."""
    path = Path(path)
    inputs: list[str] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--from-log {path}:{lineno}: not JSON: {exc.msg}") from None
        body = row.get("body") or row.get("request") or row if isinstance(row, dict) else None
        msgs = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(msgs, list):
            raise ConfigError(f"--from-log {path}:{lineno}: no 'messages' list (expected an OpenAI chat request)")
        users = [m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            continue
        content = users[-1]
        if isinstance(content, list):  # content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if isinstance(content, str) and content.strip() and content not in inputs:
            inputs.append(content)
    return inputs


def _file_hash(path: Path | None) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path is not None and path.is_file() else None


def data_settings(task, cfg: SynthConfig, teacher: str) -> dict:
    """The settings that change the data (what `data_is_fresh` compares)."""
    eval_path = None
    if cfg.decontaminate:
        eval_path = Path(cfg.eval_file) if cfg.eval_file else gold_file(task)
    return {
        "n": cfg.n,
        "seed": cfg.seed,
        "teacher": teacher,
        "teacher_model": None if teacher == "offline" else cfg.teacher_model,
        "judge": cfg.judge and teacher != "offline",
        "judge_min": cfg.judge_min if cfg.judge and teacher != "offline" else None,
        "val_fraction": cfg.val_fraction,
        "dedup_threshold": cfg.dedup_threshold,
        "decontaminate": cfg.decontaminate,
        "eval_file_sha": _file_hash(eval_path),
        "from_log_sha": _file_hash(Path(cfg.from_log)) if cfg.from_log else None,
    }


def data_is_fresh(task, run_dir, cfg: SynthConfig | None = None) -> bool:
    """Whether `run_dir/data` was made, completely, from this task as it is now and these settings.

    `schemabuild train` re-synthesizes when this is False. `cfg` is the SynthConfig the data would be
    made with now (default settings when None).
    """
    cfg = cfg or SynthConfig()
    run = Run(run_dir)
    return run.data_matches(task) and run.manifest().get("settings") == data_settings(task, cfg, expected_teacher(cfg))


def run_synth_config(run_dir, **overrides) -> SynthConfig:
    """The SynthConfig the run's data was made with (data/manifest.json), else the defaults; `overrides` win.

    What `schemabuild train` re-synthesizes with, so a custom teacher, judge or split survives a new --n.
    """
    names = {f.name for f in dataclasses.fields(SynthConfig)}
    saved = (Run(run_dir).manifest() or {}).get("config") or {}
    settings = {k: v for k, v in saved.items() if k in names and k not in ("run", "from_log", "eval_file")} \
        if isinstance(saved, dict) else {}
    settings.update({k: v for k, v in overrides.items() if k in names})
    try:
        return SynthConfig(**settings)
    except (TypeError, ValueError):
        return SynthConfig(**{k: v for k, v in overrides.items() if k in names})


def _run_dir(task, cfg: SynthConfig, runs_dir) -> tuple[Path, bool]:
    """(run dir, resumed): --run, else the latest run if its synth never finished, else a new run."""
    if cfg.run:
        path = Path(cfg.run)
        if not path.is_dir() and len(path.parts) == 1:  # a run id
            path = runs_root(runs_dir) / task.name / cfg.run
        path.mkdir(parents=True, exist_ok=True)
        if path.resolve().parent == (runs_root(runs_dir) / task.name).resolve():
            set_latest(path)
        return path, False
    latest = latest_run(task.name, runs_dir)
    if latest is not None and Run(latest).synth_config_file.is_file() and not Run(latest).manifest_file.is_file():
        return latest, True
    return new_run(task.name, runs_dir), False


# ---- the stage -------------------------------------------------------------------------------------

def synthesize(task, cfg: SynthConfig, runs_dir=None) -> Path:
    """Synthesize, check and save a training set for `task`; returns the run directory."""
    # setup
    gold, gold_path = gold_inputs(task, cfg)
    log_inputs = read_log_inputs(cfg.from_log) if cfg.from_log else []
    run_dir, resumed = _run_dir(task, cfg, runs_dir)
    run = Run(run_dir)
    run.data.mkdir(parents=True, exist_ok=True)
    run.manifest_file.unlink(missing_ok=True)
    write_json(run.synth_config_file, resolved(cfg))
    if resumed:
        click.echo(f"resuming {run_dir} (its synthesis did not finish; finished teacher calls come from the cache)", err=True)
    if cfg.decontaminate and gold is None:
        click.echo(f"note: no gold set at {cfg.eval_file or gold_file(task)}; skipping decontamination", err=True)
    teacher = make_teacher(task, cfg, cache_path(runs_dir))

    # run
    outcome = asyncio.run(collect(task, cfg, teacher, gold, log_inputs))
    train, val = split(outcome.kept, cfg.val_fraction, cfg.seed)

    # save
    n_train = write_jsonl(run.train_file, (chat_row(task, r.input, r.output) for r in train))
    n_val = write_jsonl(run.val_file, (chat_row(task, r.input, r.output) for r in val))
    write_jsonl(run.rejects_file, (r.to_dict() for r in outcome.rejects))
    manifest = _manifest(task, cfg, teacher, outcome, log_inputs, train, n_train, n_val, gold_path)
    write_json(run.manifest_file, manifest)
    _report(cfg, teacher, outcome, manifest, run)
    return run_dir


def _manifest(task, cfg: SynthConfig, teacher, outcome, log_inputs, train, n_train, n_val, gold_path) -> dict:
    """data/manifest.json: counts, reasons, teacher and cost, task fingerprint, the settings, gold overlap."""
    by_stage, by_reason = count_reasons(outcome.rejects)
    note = teacher.note() if callable(getattr(teacher, "note", None)) else None
    return {
        "task": task.name,
        "complete": outcome.complete,
        "reached_n": len(outcome.kept) >= cfg.n,
        "stop_reason": outcome.stop_reason or None,
        "counts": {
            "requested": cfg.n,
            "examples": len(task.examples),
            "logged_inputs": len(log_inputs),
            "candidates": len(outcome.candidates),
            "kept": len(outcome.kept),
            "train": n_train,
            "val": n_val,
            "rejected": len(outcome.rejects),
            "surplus_dropped": outcome.surplus,
        },
        "rejected_by_stage": by_stage,
        "rejected_by_reason": by_reason,
        "teacher": {"name": teacher.name, "model": teacher.model, **({"note": note} if note else {}),
                    **({"coverage": teacher.coverage()} if callable(getattr(teacher, "coverage", None)) else {})},
        "ledger": teacher.ledger(),
        "fingerprint": task.fingerprint(),
        "settings": data_settings(task, cfg, teacher.name),
        "seeds": {"generate": [cfg.seed + r for r in range(MAX_ROUNDS)], "split": cfg.seed},
        "gold_file": str(gold_path) if gold_path else None,
        "gold_overlap": gold_overlap(task, [r.input for r in train], gold_path),
        "config": resolved(cfg),
        "versions": _versions(),
    }


def _report(cfg: SynthConfig, teacher, outcome, manifest: dict, run: Run) -> None:
    ledger, by_reason, counts = manifest["ledger"], manifest["rejected_by_reason"], manifest["counts"]
    click.echo(f"teacher {teacher.name} ({teacher.model}): {len(outcome.candidates)} candidates, "
               f"{len(outcome.kept)} kept, {len(outcome.rejects)} rejected"
               + (f", ${ledger.get('cost_usd', 0):.4f}" if teacher.name != "offline" else ""))
    click.echo(_table(len(outcome.kept), by_reason))
    if not outcome.complete:
        click.echo(f"stopped early: {outcome.stop_reason}; saved what was labelled ({len(outcome.kept)} pairs), "
                   "manifest says complete: false. Rerun with a higher --budget-usd to continue from the cache.")
    elif not manifest["reached_n"]:
        click.echo(f"only {len(outcome.kept)} of --n {cfg.n} pairs: {outcome.stop_reason or 'the checks rejected the rest'}")
    click.echo(f"wrote {counts['train']} train + {counts['val']} val rows to {run.data}")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("schemabuild", "pydantic", "openai"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _table(kept: int, by_reason: dict[str, int]) -> str:
    rows = [("kept", kept)] + [(f"rejected  {k}", v) for k, v in by_reason.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v:>6}" for k, v in rows)


