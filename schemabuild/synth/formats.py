"""Dataset formats for `schemabuild export`: a run's data as openai (as stored), sharegpt or alpaca JSONL."""

from __future__ import annotations

from pathlib import Path

import click

from schemabuild.contract import split_chat_row
from schemabuild.errors import ConfigError, TaskError
from schemabuild.runs import Run, read_jsonl, write_jsonl

DATASET_FORMATS = ("openai", "sharegpt", "alpaca")


def export_dataset(task, run_dir, fmt: str, out=None) -> Path:
    """Write train.jsonl and val.jsonl of a run's data in `fmt` (openai, sharegpt, alpaca); returns the folder."""
    if fmt not in DATASET_FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not a dataset format ({', '.join(DATASET_FORMATS)})")
    run = Run(run_dir)
    if not run.has_data():
        raise TaskError(f"{run.data} has no train.jsonl; run `schemabuild synth {task.name}` first")
    out = Path(out) if out else run.export(fmt)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")

    def convert(row: dict) -> dict:
        if fmt == "openai":
            return row
        system, user, target = split_chat_row(row)
        if fmt == "sharegpt":
            return {"conversations": [{"from": "system", "value": system}, {"from": "human", "value": user},
                                      {"from": "gpt", "value": target}]}
        return {"instruction": system, "input": user, "output": target}

    for src in (run.train_file, run.val_file):
        write_jsonl(out / src.name, (convert(r) for r in read_jsonl(src)) if src.is_file() else ())
    click.echo(f"wrote {fmt} dataset to {out}/ (train.jsonl, val.jsonl)")
    return out
