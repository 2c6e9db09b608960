"""Evaluate: setup (run, gold set, models) → run (predict, score every field by its type) → save (report.json,
report.md, report.html with inline SVG plots, predictions.jsonl) → gate (exit code).

    schemabuild eval tool_picker --min json_valid=1.0 --min field.tool=0.9 --compare base
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import json
from pathlib import Path

from schemabuild.contract import load_contract, split_chat_row
from schemabuild.errors import ConfigError, TaskError
from schemabuild.evaluate.gate import check_gate, gap_closed
from schemabuild.evaluate.html import render_html
from schemabuild.evaluate.markdown import format_summary, render_markdown
from schemabuild.evaluate.scoring import PRIMARY, as_answer, score
from schemabuild.evaluate.settings import EvalConfig
from schemabuild.precision import choose_precision
from schemabuild.predictor import Predictor, resolve_device
from schemabuild.runs import Run, cache_path, gold_file, read_json, read_jsonl, resolve_run, write_json, write_jsonl
from schemabuild.synth import make_teacher, run_synth_config, teacher_configured
from schemabuild.task import Example, Task, load_jsonl_examples, load_task


def load_rows(task: Task, path: Path) -> list[Example]:
    """Gold rows ({"input", "output"}) or chat rows ({"messages": [...]}) as validated Examples."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"no eval file {path}")
    first = next(iter(read_jsonl(path)), None) if path.stat().st_size else None
    if isinstance(first, dict) and "messages" in first:
        rows = []
        for lineno, row in enumerate(read_jsonl(path), 1):
            try:
                _, text, target = split_chat_row(row)
            except (KeyError, TypeError):
                raise TaskError(f"{path}:{lineno}: a chat row needs user and assistant messages") from None
            rows.append(Example(text, task.validate_output(target, f"{path.name}:{lineno}")))
        if not rows:
            raise TaskError(f"{path}: no rows")
        return rows
    return load_jsonl_examples(task, path)


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def _base_model_ref(run_dir: Path, contract: dict) -> str | None:
    """Where the un-fine-tuned base of a run is: run_dir/base/, the manifest's record, or contract["base_model"]."""
    run = Run(run_dir)
    for folder in (run.dir / "base", run.tiny_base):  # tiny runs keep their untrained base in tiny_base/
        if (folder / "config.json").is_file():
            return str(folder)
    where = (run.train_config() or {}).get("base_model")
    if where and where != "tiny":
        return str(where)
    ref = contract.get("base_model")
    if not ref or ref == "tiny":
        return None
    return str(ref)


def _predict_base(task, run_dir: Path, texts: list[str], cfg: EvalConfig, quiet: bool):
    """(answers, source) of the un-fine-tuned base, or (None, why) when it cannot be had."""
    ref = _base_model_ref(run_dir, load_contract(Run(run_dir).model))
    if ref is None:
        return None, f"base comparison skipped: {run_dir} records no base model directory"
    try:
        predictor = Predictor.from_base(task, ref, grammar_backend=cfg.grammar_backend)
    except (OSError, ValueError, TaskError) as exc:
        return None, f"base comparison skipped: cannot load base {ref}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return predictor.predict_many(texts, batch_size=cfg.batch_size, progress=not quiet), ref


def _teacher_answers(task, run_dir: Path, texts: list[str], runs_dir):
    """(answers, source) from the synthesis teacher, or (None, why) when offline."""
    if not teacher_configured():
        return None, "teacher comparison skipped: no OPENAI_API_KEY / OPENAI_BASE_URL (offline)"
    teacher = make_teacher(task, run_synth_config(run_dir), cache_path(runs_dir))
    labelled = asyncio.run(teacher.label(task, texts))
    return [as_answer(x) for x in labelled], f"{teacher.name}:{teacher.model}"


def evaluate(task: Task, cfg: EvalConfig, runs_dir=None, quiet: bool = False) -> dict:
    """Score the run's model (and `--compare` models) on the gold set, write the reports, apply the gate."""
    # setup
    run_dir = resolve_run(task.name, cfg.run, runs_dir, need="model")
    data = cfg.data or gold_file(task)
    examples = load_rows(task, data)
    if cfg.limit:
        examples = examples[: cfg.limit]
    baseline = None
    if cfg.baseline is not None:
        if not cfg.baseline.is_file():
            raise ConfigError(f"--baseline {cfg.baseline}: no such file")
        try:
            baseline = read_json(cfg.baseline)["metrics"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"--baseline {cfg.baseline}: not a schemabuild report.json") from None
    out = cfg.out or Run(run_dir).eval
    texts = [ex.input for ex in examples]
    notes: list[str] = []

    # run
    precision = choose_precision(cfg.precision, resolve_device())
    if cfg.engine == "torch":
        _say(precision.line, quiet)
    predictor = Predictor.from_run(task, run=str(run_dir), runs_dir=runs_dir, grammar_backend=cfg.grammar_backend,
                                   precision=precision, engine=cfg.engine)
    preds = predictor.predict_many(texts, batch_size=cfg.batch_size, progress=not quiet)
    models = {PRIMARY: score(task, examples, preds, PRIMARY, str(Run(run_dir).model))}
    for other in cfg.compare:
        if other == "base":
            answers, source = _predict_base(task, run_dir, texts, cfg, quiet)
        else:
            answers, source = _teacher_answers(task, run_dir, texts, runs_dir)
        if answers is None:
            notes.append(source)
            _say(source, quiet)
            continue
        models[other] = score(task, examples, answers, other, source)

    if "teacher" in models and "base" in models:
        models[PRIMARY]["metrics"].update(gap_closed(models[PRIMARY]["metrics"], models["base"]["metrics"],
                                                     models["teacher"]["metrics"]))
    failures = check_gate(models[PRIMARY]["metrics"], cfg.thresholds, baseline, cfg.tolerance,
                          str(cfg.baseline) if cfg.baseline else "baseline")
    report = {
        "task": task.name,
        "run": str(run_dir),
        "data": str(data),
        "n": len(examples),
        "precision": precision.name,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "metrics": models[PRIMARY]["metrics"],
        "models": models,
        "gate": {"passed": not failures, "failures": failures, "min": cfg.thresholds,
                 "baseline": str(cfg.baseline) if cfg.baseline else None, "tolerance": cfg.tolerance},
        "notes": notes,
        "out": str(out),
    }
    curve = training_curve(run_dir)
    if curve:
        report["training"] = curve

    # save
    write_reports(report, out)
    return report


def training_curve(run_dir) -> dict | None:
    """The run's training curve for the report: loss per logging step and validation accuracy per field per
    measurement (from model/train_log.jsonl and train_summary.json); None when the run has neither."""
    run = Run(run_dir)
    summary = read_json(run.train_summary) if run.train_summary.is_file() else {}
    loss = []
    if run.train_log.is_file():
        loss = [[e["step"], e["loss"]] for e in read_jsonl(run.train_log) if isinstance(e.get("loss"), (int, float))]
    if not loss and not summary.get("curve"):
        return None
    return {"loss": loss, "val": summary.get("curve", []), "length": summary.get("length"),
            "best_step": summary.get("best_step"), "stopped": summary.get("stopped"),
            "global_step": summary.get("global_step")}


def write_reports(report: dict, out: Path) -> dict[str, Path]:
    """report.json, report.md, report.html and predictions.jsonl under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slim = {**report, "models": {k: {**m, "rows": [r for r in m["rows"] if not r["exact"]]}
                                 for k, m in report["models"].items()}}
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html",
             "predictions": out / "predictions.jsonl"}
    write_json(paths["json"], slim)
    paths["md"].write_text(render_markdown(report))
    paths["html"].write_text(render_html(report))
    write_jsonl(paths["predictions"], ({"model": k, **row} for k, m in report["models"].items() for row in m["rows"]))
    return paths


def run_eval(task, cfg: EvalConfig, runs_dir=None) -> int:
    """`schemabuild eval`: evaluate, print the summary and one line per failed threshold; 0 passes, 1 fails."""
    report = evaluate(task, cfg, runs_dir)
    print(format_summary(report))
    return 0 if report["gate"]["passed"] else 1


def evaluate_run(task, run_dir, quiet: bool = False, **settings) -> dict:
    """Evaluate a freshly trained run with the default settings (called at the end of `schemabuild train`).

    Scores on the gold set evals/<task>.jsonl, or on the run's validation split when there is none.
    """
    run_dir = Path(run_dir)
    cfg = EvalConfig(run=str(run_dir), **settings)
    note = None
    if cfg.data is None and not gold_file(task).is_file():
        val = Run(run_dir).val_file
        if not val.is_file() or not val.stat().st_size:
            msg = f"no gold set {gold_file(task)} and no {val}: skipping evaluation"
            _say(msg, quiet)
            return {"task": task.name, "run": str(run_dir), "skipped": msg}
        cfg.data = val
        note = f"no gold set {gold_file(task)}: scored on the validation split {val} (write a gold set for honest figures)"
        _say(note, quiet)
    report = evaluate(task, cfg, quiet=quiet)
    if note:
        report["notes"].insert(0, note)
    return report


@dataclasses.dataclass
class ValScorer:
    """The first rows of a run's validation split and a scorer of answers to them (what training measures its length
    with: `schemabuild.train.length.Validator`)."""

    task: Task
    examples: list[Example]

    @property
    def texts(self) -> list[str]:
        return [ex.input for ex in self.examples]

    def __call__(self, answers: list) -> dict:
        """{"fields": {path: accuracy}, "exact_match", "json_valid", "schema_valid"} of one answer per row."""
        m = score(self.task, self.examples, answers)
        return {"fields": {path: f["accuracy"] for path, f in m["fields"].items()},
                **{k: m["metrics"][k] for k in ("exact_match", "json_valid", "schema_valid")}}


def val_scorer(task, run_dir, rows: int) -> ValScorer | None:
    """A ValScorer over the first `rows` rows of `run_dir`'s data/val.jsonl; None when it has none."""
    val = Run(run_dir).val_file
    if not val.is_file() or not val.stat().st_size:
        return None
    return ValScorer(task, load_rows(task, val)[:rows])


def assert_gate(task_name: str, min: dict[str, float] | None = None, run: str | None = None, data=None,
                baseline=None, tolerance: float = 0.02, runs_dir=None, tasks_dir=None, limit: int | None = None,
                compare: list[str] | None = None, out=None) -> dict:
    """For pytest: evaluate the task's latest (or given) run and fail the test with one line per failed threshold.

        from schemabuild.evaluate import assert_gate

        def test_tool_picker():
            assert_gate("tool_picker", min={"json_valid": 1.0, "field.tool": 0.9})
    """

    task = load_task(task_name, tasks_dir)
    cfg = EvalConfig(run=str(run) if run else None, data=data, min=[f"{k}={v}" for k, v in (min or {}).items()],
                     baseline=baseline, tolerance=tolerance, limit=limit, compare=list(compare or []), out=out)
    report = evaluate(task, cfg, runs_dir, quiet=True)
    if not report["gate"]["passed"]:
        raise AssertionError(f"{task_name} eval gate failed (report: {report['out']}/report.md)\n"
                             + "\n".join(report["gate"]["failures"]))
    return report

