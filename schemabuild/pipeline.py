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

from schemabuild.errors import ConfigError
from schemabuild.evaluate import evaluate_run, format_summary, primary
from schemabuild.refine import refine
from schemabuild.runs import Run, latest_run, read_json, resolve_run
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
    model_dir = train_run(task, run_dir, cfg)
    if not is_main():
        return run_dir
    report = _evaluate(task, run_dir) if cfg.eval else None
    if cfg.refine > 0:
        refine(task, run_dir, cfg, cfg.refine, runs_dir=runs_dir)
        if cfg.eval:
            report = _evaluate(task, run_dir)
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
    if report is not None and "models" in report:
        ft = primary(report)
        m = ft["metrics"]
        metrics = [f"json_valid {m.get('json_valid', float('nan')):.2f}", f"schema_valid {m.get('schema_valid', float('nan')):.2f}"]
        metrics += [f"{k} {v.get('accuracy', float('nan')):.2f}" for k, v in ft["fields"].items()]
        lines.append(f"eval:   {run.eval / 'report.md'}  ({', '.join(metrics)})")
    lines.append(f"serve:  schemabuild serve {task.name} --run {run_dir}")
    return "\n".join(lines)


def ensure_run(task, runs_dir=None, **train_settings) -> Path:
    """The task's latest trained run when it still fits the task, else a new one trained with `schemabuild train`'s
    offline-friendly defaults (plus `train_settings`, e.g. n=300). For eval gates in CI."""
    latest = latest_run(task.name, runs_dir)
    if latest is not None and Run(latest).model_matches(task):
        return latest
    why = "no trained run" if latest is None else f"{latest} is stale for the task as it is now"
    print(f"{task.name}: {why}; training one", flush=True)
    return Path(train_task(task, PipelineConfig(eval=False, **train_settings), runs_dir=runs_dir))
