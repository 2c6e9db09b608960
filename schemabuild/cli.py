"""The `schemabuild` command line: thin wrappers over the stages and the pipeline (torch and friends load only when a
command needs them, so `schemabuild --help` is instant)."""

from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path

import click

from schemabuild.config import ConfigError, click_options, from_options, load_config_file
from schemabuild.contract import canonical_json
from schemabuild.errors import SchemabuildError
from schemabuild.evaluate import EvalConfig, run_eval
from schemabuild.inference.forward import ENGINES
from schemabuild.inference.grammars import BACKENDS, DEFAULT_BACKEND
from schemabuild.pipeline import PipelineConfig, train_task
from schemabuild.precision import PRECISIONS, choose_precision, choose_wait_policy
from schemabuild.predictor import Predictor, resolve_device
from schemabuild.runs import Run, resolve_run
from schemabuild.synth import DATASET_FORMATS, SynthConfig, export_dataset, synthesize
from schemabuild.task import TaskError, describe, list_tasks, load_task, tasks_dir as resolve_tasks_dir, write_template
from schemabuild.train import (GGUF_FORMATS, MODEL_FORMATS, QUANTS, export_gguf, export_merged, export_ollama,
                               export_vllm, serving_gguf)
from schemabuild.serve.app import run_server
from schemabuild.serve.config import ServeConfig

TASKS_DIR = click.option("--tasks-dir", type=click.Path(path_type=Path), default=None, envvar="SCHEMABUILD_TASKS",
                         help="Folder of task files [default: ./tasks].")
RUNS_DIR = click.option("--runs-dir", type=click.Path(path_type=Path), default=None, envvar="SCHEMABUILD_RUNS",
                        help="Folder runs are written under [default: ./runs].")
CONFIG = click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                      help="JSON or TOML settings file (flags given on the command line win).")


def user_errors(fn):
    """Show user mistakes as one line (no traceback) and exit non-zero; `--debug` / SCHEMABUILD_DEBUG=1 re-raise."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SchemabuildError as exc:
            if _debug():
                raise
            raise click.ClickException(str(exc)) from None
        except (OSError, UnicodeDecodeError) as exc:
            if _debug() or not _user_caused(exc):
                raise
            raise click.ClickException(os_error_line(exc)) from None

    return wrapper


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    flag = bool(ctx and ctx.find_root().params.get("debug"))
    return flag or os.environ.get("SCHEMABUILD_DEBUG", "") not in ("", "0")


# What the user can fix: the file system said no, or a file is not text. Anything else keeps its traceback.
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC, errno.EDQUOT,
                errno.ENOENT, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP}
_ADVICE = {errno.EACCES: "check its permissions or choose another path",
           errno.EPERM: "check its permissions or choose another path",
           errno.EROFS: "the file system is read-only; choose a writable path (e.g. --runs-dir)",
           errno.ENOTDIR: "a part of this path is a file, not a folder; choose another path",
           errno.EISDIR: "this is a folder, a file was expected",
           errno.ENOSPC: "the disk is full; free space or choose another path",
           errno.EDQUOT: "the disk quota is exceeded; free space or choose another path",
           errno.ENOENT: "it does not exist",
           errno.EEXIST: "it already exists",
           errno.ENAMETOOLONG: "the path is too long",
           errno.ELOOP: "too many symbolic links"}


def _user_caused(exc: BaseException) -> bool:
    return isinstance(exc, UnicodeDecodeError) or getattr(exc, "errno", None) in _USER_ERRNOS


def _file_being_read(exc: BaseException) -> str | None:
    """The file a UnicodeDecodeError came from: the innermost frame reading a Path or an open file."""
    import pathlib
    import traceback

    for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
        for name in ("f", "file", "self", "path"):
            value = frame.f_locals.get(name)
            if isinstance(value, pathlib.PurePath):
                return str(value)
            if name in ("f", "file") and isinstance(getattr(value, "name", None), str):
                return value.name
    return None


def os_error_line(exc: BaseException) -> str:
    """One line naming the path and what to do, for a user-caused OSError or UnicodeDecodeError."""
    if isinstance(exc, UnicodeDecodeError):
        where = _file_being_read(exc)
        return (f"{where or 'a file'}: not UTF-8 text (byte {exc.start}); "
                "give a UTF-8 text file (is it binary?)")
    path = exc.filename if exc.filename is not None else "a path"
    reason = exc.strerror or type(exc).__name__
    advice = _ADVICE.get(exc.errno, "")
    return f"{path}: {reason}" + (f"; {advice}" if advice else "")


def make_config(cls, ctx: click.Context, options: dict, config_file: Path | None):
    """Settings: dataclass defaults < `--config` file < flags given on the command line."""
    values = dict(options)
    if config_file is not None:
        from_file = load_config_file(config_file)
        for key, value in from_file.items():
            if key not in values:
                raise ConfigError(f"--config {config_file}: unknown setting {key!r}")
            if ctx.get_parameter_source(key) != click.core.ParameterSource.COMMANDLINE:
                values[key] = value
    return from_options(cls, values)


def _load(name: str, tasks_dir):
    return load_task(name, tasks_dir)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="schemabuild")
@click.option("--debug", is_flag=True, help="Show full tracebacks (also SCHEMABUILD_DEBUG=1).")
def main(debug):
    """Turn a Pydantic output schema plus a few examples into a small fine-tuned model served as a JSON API.

    \b
    schemabuild init my_task          write tasks/my_task.py to edit
    schemabuild train my_task         synthesize data, fine-tune, evaluate
    schemabuild serve my_task         OpenAI-compatible JSON API with constrained decoding
    schemabuild eval my_task --min field.label=0.9   a CI gate
    """


@main.command()
@click.argument("name")
@TASKS_DIR
@click.option("--force", is_flag=True, help="Overwrite an existing task file.")
@user_errors
def init(name, tasks_dir, force):
    """Write a commented task file to start from."""
    path = write_template(name, tasks_dir, force=force)
    click.echo(f"wrote {path}: edit it, then run `schemabuild train {name}`")


@main.command("tasks")
@TASKS_DIR
@user_errors
def tasks_cmd(tasks_dir):
    """List the tasks in the tasks folder."""
    names = list_tasks(tasks_dir)
    if not names:
        click.echo(f"no tasks in {resolve_tasks_dir(tasks_dir)}; create one with `schemabuild init NAME`")
    for name in names:
        try:
            click.echo(describe(load_task(name, tasks_dir)))
        except TaskError as exc:
            click.echo(f"{name}: error: {exc}")


@main.command()
@click.argument("task")
@TASKS_DIR
@RUNS_DIR
@CONFIG
@click_options(SynthConfig)
@click.pass_context
@user_errors
def synth(ctx, task, tasks_dir, runs_dir, config_file, **options):
    """Synthesize a validated training set for TASK with a teacher LLM (offline without a key)."""
    cfg = make_config(SynthConfig, ctx, options, config_file)
    synthesize(_load(task, tasks_dir), cfg, runs_dir=runs_dir)


@main.command()
@click.argument("task")
@TASKS_DIR
@RUNS_DIR
@CONFIG
@click_options(PipelineConfig)
@click.pass_context
@user_errors
def train(ctx, task, tasks_dir, runs_dir, config_file, **options):
    """Synthesize (if needed), fine-tune and evaluate TASK; prints where everything went."""
    choose_wait_policy()  # before torch loads: OpenMP reads it once (announced in training's `cpu:` line)
    cfg = make_config(PipelineConfig, ctx, options, config_file)
    train_task(_load(task, tasks_dir), cfg, runs_dir=runs_dir)


@main.command("eval")
@click.argument("task")
@TASKS_DIR
@RUNS_DIR
@CONFIG
@click_options(EvalConfig)
@click.pass_context
@user_errors
def eval_cmd(ctx, task, tasks_dir, runs_dir, config_file, **options):
    """Score TASK's model per field on the gold set; exit non-zero when a threshold fails (a CI gate)."""
    cfg = make_config(EvalConfig, ctx, options, config_file)
    t = _load(task, tasks_dir)
    if cfg.engine == "llamacpp":
        _write_gguf(t, cfg.run, runs_dir)
    sys.exit(run_eval(t, cfg, runs_dir=runs_dir))


@main.command()
@click.argument("tasks", nargs=-1, required=True)
@TASKS_DIR
@RUNS_DIR
@CONFIG
@click_options(ServeConfig)
@click.pass_context
@user_errors
def serve(ctx, tasks, tasks_dir, runs_dir, config_file, **options):
    """Serve TASKS behind an OpenAI-compatible JSON API with constrained decoding."""
    cfg = make_config(ServeConfig, ctx, options, config_file)
    run_server([_load(t, tasks_dir) for t in tasks], cfg, runs_dir=runs_dir)


@main.command()
@click.argument("task")
@click.argument("text")
@TASKS_DIR
@RUNS_DIR
@click.option("--run", default=None, help="Run directory or run id [default: the task's latest run].")
@click.option("--max-tokens", default=256, show_default=True, help="Most output tokens.")
@click.option("--grammar-backend", type=click.Choice(list(BACKENDS)), default=DEFAULT_BACKEND,
              show_default=True, help="Grammar engine for constrained decoding.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Weights: fp32, bf16, int8 or auto (as `serve`; announced on stderr).")
@click.option("--speculate/--no-speculate", default=True, show_default=True,
              help="Drafts copied from the message, kept where the model agrees (same answer, fewer passes).")
@click.option("--engine", type=click.Choice(ENGINES), default="torch", show_default=True,
              help="Forward passes: torch, or llamacpp over the run's Q8_0 GGUF (written on first use).")
@user_errors
def predict(task, text, tasks_dir, runs_dir, run, max_tokens, grammar_backend, precision, speculate, engine):
    """Run TASK's model locally on TEXT (no server) and print the JSON output."""
    t = _load(task, tasks_dir)
    choice = choose_precision(precision, resolve_device())
    if engine == "llamacpp":
        run = str(_write_gguf(t, run, runs_dir))
    else:
        click.echo(choice.line, err=True)
    predictor = Predictor.from_run(t, run=run, runs_dir=runs_dir, grammar_backend=grammar_backend, precision=choice,
                                   speculate=speculate, engine=engine)
    result = predictor.predict(text, max_tokens=max_tokens)
    if result.output is None:
        click.echo(result.text, err=True)
        raise click.ClickException(f"no valid output: {result.error or result.finish_reason}")
    click.echo(canonical_json(result.output))


@main.command()
@click.argument("task")
@TASKS_DIR
@RUNS_DIR
@click.option("--format", "fmt", required=True,
              type=click.Choice([*DATASET_FORMATS, *MODEL_FORMATS, *GGUF_FORMATS]), help="What to write.")
@click.option("--quant", type=click.Choice(QUANTS), default="q8_0", show_default=True,
              help="GGUF weight type (--format gguf or ollama).")
@click.option("--run", default=None, help="Run directory or run id [default: the task's latest run].")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output path [default: inside the run].")
@user_errors
def export(task, tasks_dir, runs_dir, fmt, quant, run, out):
    """Export TASK's dataset (openai, sharegpt, alpaca) or model (merged, vllm, gguf for llama.cpp, ollama)."""
    t = _load(task, tasks_dir)
    if fmt in DATASET_FORMATS:
        export_dataset(t, resolve_run(task, run, runs_dir, need="data"), fmt, out)
    elif fmt in GGUF_FORMATS:
        export = export_gguf if fmt == "gguf" else export_ollama
        export(t, resolve_run(task, run, runs_dir, need="model"), out, quant)
    else:
        export = export_merged if fmt == "merged" else export_vllm
        export(t, resolve_run(task, run, runs_dir, need="model"), out)


def _write_gguf(task, run, runs_dir) -> Path:
    """The run `--engine llamacpp` serves, its GGUF written first when missing or stale (`train.serving_gguf`)."""
    run_dir = resolve_run(task.name, run, runs_dir, need="model")
    serving_gguf(task, Run(run_dir).model, say=lambda line: click.echo(line, err=True))
    return run_dir


if __name__ == "__main__":
    main()
