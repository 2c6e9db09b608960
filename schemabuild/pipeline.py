"""The `schemabuild train` command's flow: pick (or synthesize) the run → train → evaluate → refine → summary.

    schemabuild train tool_picker            # reuses the latest run's fresh data, else synthesizes
    schemabuild train tool_picker --n 2000   # new data of that size (with the teacher settings the last data had)

Which data a training uses, in order: `--resume` (the run to continue), `--run`, the latest run when its data is
untrained, complete and made from the task as it is now (whatever teacher made it) and `--n` asks for no other
size; otherwise a new run is synthesized, with the settings the latest data was made with. Under a multi-process
launcher nothing is synthesized: every process trains the same run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from schemabuild.config import resolved
from schemabuild.errors import ConfigError
from schemabuild.evaluate import evaluate_run, format_summary, primary, val_scorer
from schemabuild.refine import refine
from schemabuild.runs import Run, latest_run, read_json, resolve_run, training_fingerprint, write_json
from schemabuild.synth import SynthConfig, run_synth_config, synthesize
from schemabuild.train import TrainConfig, check_base_arg, is_main, train_run, world_size

DEFAULT_N = SynthConfig.n
"""Training pairs synthesized when there is no earlier data to take the size from (synth's own default, 800)."""


@dataclasses.dataclass
class PipelineConfig(TrainConfig):
    """The `train` command's settings: the trainer's (`TrainConfig`) plus which data, the evaluation and refinement
    around it."""

    run: str | None = None
    """Train in this run directory or run id [default: the latest run if its data is fresh and untrained, else a new run]."""
    n: int | None = None
    """Training pairs to synthesize [default: reuse the latest run's fresh data whatever its size; 800 when there is
    none]. A different --n than the data has asks for new data (made with the same teacher settings)."""
    refine: int = 0
    """Rounds of error-driven refinement after the first evaluation (0 = none)."""
    eval: bool = True
    """Evaluate on the gold set at the end."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n is not None and self.n < 1:
            raise ConfigError(f"--n: must be >= 1, got {self.n}")
        if self.refine < 0:
            raise ConfigError(f"--refine: must be >= 0, got {self.refine}")


def train_task(task, cfg: PipelineConfig, runs_dir=None) -> Path:
    """`schemabuild train`: synthesize if needed, fine-tune, evaluate, refine; print where everything went."""
    check_base_arg(cfg.base)  # a mistyped --base fails now, not after synthesis (possibly paid teacher calls)
    run_dir = pick_run(task, cfg, runs_dir)
    model_dir = train_run(task, run_dir, cfg, validator=val_scorer(task, run_dir, cfg.val_rows))
    if not is_main():
        return run_dir
    report = _evaluate(task, run_dir) if cfg.eval else None
    if cfg.refine > 0:
        refine(task, run_dir, cfg, cfg.refine, runs_dir=runs_dir)
        if cfg.eval:
            report = _evaluate(task, run_dir)
    run = Run(run_dir)
    write_json(run.fingerprint_file, training_fingerprint(task, training_settings(cfg), run))
    print(final_summary(task, run_dir, model_dir, report))
    return run_dir


def pick_run(task, cfg: PipelineConfig, runs_dir=None) -> Path:
    """The run to train in: --resume's, --run, the latest run when its data can be reused, or a new synthesized one."""
    if cfg.resume or cfg.run:
        flag = ("--resume --run" if cfg.run else "--resume") if cfg.resume else "--run"
        run = Run(resolve_run(task.name, cfg.run, runs_dir))
        check_run_task(task, run, flag)
        if not cfg.resume and not run.has_data():
            hint = "first" if world_size() > 1 else "or drop --run"
            raise ConfigError(f"--run {cfg.run}: no data/train.jsonl; run `schemabuild synth {task.name}` {hint}")
        return run.dir
    latest = latest_run(task.name, runs_dir)
    if latest is not None and reusable(task, Run(latest), cfg):
        return latest
    if world_size() > 1:
        raise ConfigError(f"under a multi-process launcher, synthesize first (`schemabuild synth {task.name}`) or pass --run")
    synth_cfg = synth_settings(cfg, latest)
    print(f"synthesizing {synth_cfg.n} training pairs for {task.name}")
    return Path(synthesize(task, synth_cfg, runs_dir=runs_dir))


def reusable(task, run: Run, cfg: PipelineConfig) -> bool:
    """Whether `train` may train on `run`'s data as it is: untrained, complete, made from the task as it is now, and
    of the size --n asks for (any size when --n is not given). The teacher that made it does not matter."""
    if run.is_trained() or not run.data_matches(task):
        return False
    return cfg.n is None or cfg.n == _recorded(run).get("n")


def synth_settings(cfg: PipelineConfig, latest: Path | None) -> SynthConfig:
    """What a new synthesis uses: the latest data's recorded settings (teacher, judge, split...), --n and --seed."""
    recorded = _recorded(Run(latest)) if latest is not None else {}
    n = cfg.n or recorded.get("n") or DEFAULT_N
    if latest is None or not recorded:
        return SynthConfig(n=n, seed=cfg.seed)
    return run_synth_config(latest, n=n, seed=cfg.seed)


def _recorded(run: Run) -> dict:
    """The synth settings a run's manifest recorded ({} when none)."""
    config = (run.manifest() or {}).get("config")
    return config if isinstance(config, dict) else {}


def check_run_task(task, run: Run, flag: str) -> None:
    """One-line error when the run belongs to another task."""
    owner = run.task_name
    if owner != task.name:
        raise ConfigError(f"{flag} {run.dir}: that run belongs to task {owner!r}, not {task.name!r}")


def _evaluate(task, run_dir: Path):
    report = evaluate_run(task, run_dir)
    print(format_summary(report))
    return report


def final_summary(task, run_dir: Path, model_dir: Path, report: dict | None) -> str:
    """Where data, model and report are, key metrics, and the serve command."""
    run = Run(run_dir)
    lines = [f"data:   {run.data}", f"model:  {model_dir}"]
    summary = run.train_summary
    if summary.is_file():
        s = read_json(summary)
        val = f", val loss {s['val_loss']:.4f}" if s.get("val_loss") is not None else ""
        lines.append(f"train:  {s['global_step']} steps, {s['seconds']:.0f}s, train loss {s['train_loss']:.4f}{val}"
                     f" ({'full training of the tiny base' if s['full_training'] else 'LoRA on ' + s['base_model']})")
        lines += curve_lines(s)
    if report is not None and "models" in report:
        ft = primary(report)
        m = ft["metrics"]
        metrics = [f"json_valid {m.get('json_valid', float('nan')):.2f}", f"schema_valid {m.get('schema_valid', float('nan')):.2f}"]
        metrics += [f"{k} {v.get('accuracy', float('nan')):.2f}" for k, v in ft["fields"].items()]
        lines.append(f"eval:   {run.eval / 'report.md'}  ({', '.join(metrics)})")
    lines.append(f"serve:  schemabuild serve {task.name} --run {run_dir}")
    return "\n".join(lines)


NOT_TRAINING = ("run", "resume", "eval", "report_to", "logging_steps", "save_steps")
"""PipelineConfig fields that do not change the model (left out of the run's fingerprint)."""


def training_settings(cfg: PipelineConfig) -> dict:
    """The settings that make a model, as asked for (the run's fingerprint hashes them)."""
    return {k: v for k, v in resolved(cfg).items() if k not in NOT_TRAINING}


def curve_lines(summary: dict) -> list[str]:
    """The training curve in a few lines: validation accuracy per field at each measurement, and which was kept."""
    curve = summary.get("curve") or []
    if not curve:
        return []
    fields = list(curve[0]["val_fields"])
    lines = [f"curve:  {'step':>6} {'loss':>7} " + " ".join(f"{f[:12]:>12}" for f in fields) + f" {'exact':>7}"]
    for p in curve:
        loss = f"{p['loss']:.4f}" if p.get("loss") is not None else "-"
        cells = " ".join(f"{p['val_fields'][f]:>12.3f}" if p["val_fields"].get(f) is not None else f"{'-':>12}"
                         for f in fields)
        kept = "  <- kept" if p["step"] == summary.get("best_step") else ""
        lines.append(f"        {p['step']:>6} {loss:>7} {cells} {p.get('val_exact') or 0:>7.3f}{kept}")
    if summary.get("stopped"):
        lines.append(f"        stopped early: {summary['stopped']}")
    return lines


def ensure_run(task, runs_dir=None, **train_settings) -> Path:
    """The task's latest trained run when it was made by the code, settings, data and task there are now, else a new
    one trained with `schemabuild train`'s offline-friendly defaults (plus `train_settings`, e.g. n=300). For eval
    gates in CI: a change to the training code or settings is never passed on a model trained before it."""
    cfg = PipelineConfig(eval=False, **train_settings)
    latest = latest_run(task.name, runs_dir)
    if latest is not None and Run(latest).model_matches(task, training_settings(cfg)):
        return latest
    why = "no trained run" if latest is None else (
        f"{latest} is stale ({', '.join(Run(latest).stale_parts(task, training_settings(cfg))) or 'task'} changed)")
    print(f"{task.name}: {why}; training one", flush=True)
    return Path(train_task(task, cfg, runs_dir=runs_dir))
