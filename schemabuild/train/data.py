"""Training data: a run's chat rows tokenized by the contract (`input_ids` + `completion_mask`)."""

from __future__ import annotations

import json
from pathlib import Path

from schemabuild.contract import encode_example, split_chat_row, student_prompt
from schemabuild.errors import TaskError
from schemabuild.runs import Run, read_jsonl

MIN_ROWS = 4


def encode_rows(task, tokenizer, rows: list[dict]) -> list[dict]:
    """Contract-tokenized rows: `input_ids` + `completion_mask` (1 on the JSON target and end-of-turn)."""
    system = student_prompt(task)  # the rows carry the full instructions (OpenAI format); the model learns the short line
    out = []
    for row in rows:
        _, text, target = split_chat_row(row)
        out.append(encode_example(tokenizer, system, text, target))
    return out


def load_split(task, tokenizer, run_dir: Path, split: str, max_length: int | None) -> tuple[list[dict], dict]:
    """Encode `data/<split>.jsonl`; rows longer than `max_length` are dropped and counted (never cut)."""
    path = Run(run_dir).data / f"{split}.jsonl"
    if not path.is_file():
        if split == "train":
            raise TaskError(f"{path} is missing; run `schemabuild synth {task.name}` (or `schemabuild train {task.name}`)")
        return [], {"rows": 0, "dropped": 0, "longest": 0}
    try:
        rows = list(read_jsonl(path))
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path}: not JSONL ({exc.msg})") from None
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list) \
                or not any(m.get("role") == "assistant" for m in row["messages"]):
            raise TaskError(f"{path}:{i}: expected an OpenAI chat row with system, user and assistant messages")
    encoded = encode_rows(task, tokenizer, rows)
    lengths = [len(r["input_ids"]) for r in encoded]
    kept = encoded if max_length is None else [r for r in encoded if len(r["input_ids"]) <= max_length]
    stats = {"rows": len(encoded), "dropped": len(encoded) - len(kept), "longest": max(lengths, default=0),
             "tokens": sum(len(r["input_ids"]) for r in kept)}
    return kept, stats

