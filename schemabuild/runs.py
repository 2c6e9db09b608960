"""Where runs live: `runs/<task>/<run-id>/` with `runs/<task>/latest`, plus small JSON/JSONL helpers."""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterable, Iterator

from schemabuild.task import TaskError


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
    if need and not (path / need).is_dir():
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
