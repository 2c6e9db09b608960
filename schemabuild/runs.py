"""Where runs live and what is inside one: `runs/<task>/<run-id>/` with `runs/<task>/latest`, the `Run` paths,
the gold-file default, plus small JSON/JSONL helpers.

    runs/<task>/<run-id>/
      data/         train.jsonl, val.jsonl, rejects.jsonl, manifest.json, synth_config.json   (schemabuild synth)
      train_config.json, checkpoints/, tiny_base/                                             (schemabuild train)
      model/        weights or adapter, tokenizer, contract.json, train_log.jsonl, train_summary.json,
                    fingerprint.json (code, settings, data and task that made it: see `training_fingerprint`)
      eval/         report.json, report.md, report.html, predictions.jsonl                    (schemabuild eval)
      refine/       report.json, round-<k>/                                                    (train --refine)
      export/<fmt>/                                                                            (schemabuild export)
      gguf/<task>.<quant>.gguf   the model as llama.cpp serves it (serve/predict/eval --engine llamacpp)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterable, Iterator

from schemabuild.contract import check_contract, load_contract
from schemabuild.errors import ContractError, TaskError


@dataclasses.dataclass(frozen=True)
class Run:
    """One run folder: every path inside it, named once."""

    dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", Path(self.dir))

    @property
    def task_name(self) -> str:
        """The task the run belongs to: its contract's task when trained, else the folder above it."""
        if self.contract.is_file():
            try:
                return read_json(self.contract).get("task") or self.dir.parent.name
            except (OSError, ValueError, AttributeError):
                pass
        return self.dir.parent.name

    # -- data/ (schemabuild synth) --
    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def train_file(self) -> Path:
        return self.data / "train.jsonl"

    @property
    def val_file(self) -> Path:
        return self.data / "val.jsonl"

    @property
    def rejects_file(self) -> Path:
        return self.data / "rejects.jsonl"

    @property
    def manifest_file(self) -> Path:
        return self.data / "manifest.json"

    @property
    def synth_config_file(self) -> Path:
        return self.data / "synth_config.json"

    # -- training --
    @property
    def train_config_file(self) -> Path:
        return self.dir / "train_config.json"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def tiny_base(self) -> Path:
        return self.dir / "tiny_base"

    @property
    def model(self) -> Path:
        return self.dir / "model"

    @property
    def contract(self) -> Path:
        return self.model / "contract.json"

    @property
    def train_log(self) -> Path:
        return self.model / "train_log.jsonl"

    @property
    def train_summary(self) -> Path:
        return self.model / "train_summary.json"

    @property
    def fingerprint_file(self) -> Path:
        return self.model / "fingerprint.json"

    # -- after training --
    @property
    def eval(self) -> Path:
        return self.dir / "eval"

    @property
    def refine(self) -> Path:
        return self.dir / "refine"

    def export(self, fmt: str) -> Path:
        return self.dir / "export" / fmt

    def serving_gguf(self, task_name: str, quant: str = "q8_0") -> Path:
        """The GGUF `--engine llamacpp` serves (written from model/ on first use)."""
        return self.dir / "gguf" / f"{task_name}.{quant}.gguf"

    # -- state --
    def has_data(self) -> bool:
        return self.train_file.is_file()

    def has_val(self) -> bool:
        return self.val_file.is_file() and self.val_file.stat().st_size > 0

    def is_trained(self) -> bool:
        return self.contract.is_file()

    def manifest(self) -> dict | None:
        """data/manifest.json, or None when synthesis never finished (or the file is unreadable)."""
        return _read_optional(self.manifest_file)

    def train_config(self) -> dict | None:
        """The resolved settings of the last training in this run, or None."""
        return _read_optional(self.train_config_file)

    def data_matches(self, task) -> bool:
        """Whether data/ was made, completely, from `task` as it is now (its manifest's task fingerprint)."""
        manifest = self.manifest() if self.has_data() else None
        return bool(manifest) and manifest.get("complete") is True and manifest.get("fingerprint") == task.fingerprint()

    def model_matches(self, task, settings: dict | None = None) -> bool:
        """Whether the trained model still fits `task`: its contract matches and its data came from this task file;
        with `settings` (the training settings asked for now), also that the code, settings, data and task that made
        it are the ones there are now (its fingerprint.json)."""
        try:
            check_contract(load_contract(self.model), task)
        except ContractError:
            return False
        manifest = self.manifest_file
        if manifest.is_file() and (self.manifest() or {}).get("fingerprint") != task.fingerprint():
            return False
        return settings is None or _read_optional(self.fingerprint_file) == training_fingerprint(task, settings, self)

    def stale_parts(self, task, settings: dict) -> list[str]:
        """Which parts of the fingerprint differ from now (all of them when the run has none)."""
        recorded = _read_optional(self.fingerprint_file) or {}
        now = training_fingerprint(task, settings, self)
        return [k for k in now if recorded.get(k) != now[k]]


TRAINING_CODE = ("train", "synth", "contract.py", "task.py", "bases.py", "pipeline.py", "refine.py")
"""The parts of the schemabuild package whose source makes a model (its data, prompts, targets, training and the
flow around it): a change to any of them makes a trained run stale for the eval gate. Decoding and serving code is
not here: it changes what a model answers, not the model."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def code_hash() -> str:
    """A hash of the TRAINING_CODE source files (paths and bytes)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for part in TRAINING_CODE:
        path = root / part
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def data_hash(run: "Run") -> str:
    """A hash of the run's training and validation rows as they are on disk."""
    return _sha(b"".join(p.read_bytes() if p.is_file() else b"-" for p in (run.train_file, run.val_file)))


def training_fingerprint(task, settings: dict, run: "Run") -> dict[str, str]:
    """What made a trained model: hashes of the training code, the training settings as asked for, the run's data
    and the task. Written into model/fingerprint.json after training; `Run.model_matches` compares it with now."""
    return {"code": code_hash(), "settings": _sha(json.dumps(settings, sort_keys=True, default=str).encode()),
            "data": data_hash(run), "task": _sha(json.dumps(task.fingerprint(), sort_keys=True).encode())}


def _read_optional(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def gold_file(task) -> Path:
    """The task's gold eval set: evals/<task>.jsonl beside the tasks folder (beside the current folder for a task
    defined in code)."""
    base = Path(task.source).resolve().parent.parent if getattr(task, "source", None) else Path.cwd()
    return base / "evals" / f"{task.name}.jsonl"


def runs_root(explicit: str | os.PathLike | None = None) -> Path:
    """`--runs-dir`, else $SCHEMABUILD_RUNS, else ./runs."""
    return Path(explicit or os.environ.get("SCHEMABUILD_RUNS") or "runs")


def cache_path(root: str | os.PathLike | None = None) -> Path:
    """The SQLite file that caches every teacher call (shared by all tasks under one runs root)."""
    return runs_root(root) / "cache" / "teacher.sqlite"


def new_run(task: str, root: str | os.PathLike | None = None, run_id: str | None = None) -> Path:
    """Create `runs/<task>/<run-id>/` and point `latest` at it."""
    run_id = run_id or _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    path = runs_root(root) / task / run_id
    path.mkdir(parents=True, exist_ok=False)
    set_latest(path)
    return path


def set_latest(run_dir: Path) -> None:
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{secrets.token_hex(4)}"
    try:
        tmp.symlink_to(run_dir.name)
    except OSError:  # filesystems without symlinks: a text file naming the run
        tmp.write_text(run_dir.name)
    os.replace(tmp, link)


def latest_run(task: str, root: str | os.PathLike | None = None) -> Path | None:
    link = runs_root(root) / task / "latest"
    if link.is_symlink():
        target = link.parent / os.readlink(link)
    elif link.is_file():
        target = link.parent / link.read_text().strip()
    else:
        return None
    return target if target.is_dir() else None


def resolve_run(task: str, run: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
                need: str | None = None) -> Path:
    """The run a command works on: `--run DIR` (a path or a run id), else the task's latest run.

    `need` names a sub-folder that must exist (e.g. "model"); the error says how to make it.
    """
    if run:
        path = Path(run)
        if not path.is_dir():
            path = runs_root(root) / task / str(run)
        if not path.is_dir():
            raise TaskError(f"--run {run}: no such run directory")
    else:
        path = latest_run(task, root)
        if path is None:
            raise TaskError(f"no runs for task {task!r} under {runs_root(root)}; run `schemabuild train {task}` first")
    if need and not (path / need).is_dir():  # need: "data" or "model"
        hint = "schemabuild synth" if need == "data" else "schemabuild train"
        raise TaskError(f"{path} has no {need}/ folder; run `{hint} {task}` first")
    return path


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    with Path(path).open() as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
