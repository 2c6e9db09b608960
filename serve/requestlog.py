"""The request log: every answered request and its answer, one OpenAI chat JSONL line each (off by default).

    schemabuild serve tool_picker --log-requests logs/requests.jsonl [--log-max-bytes 100000000]
    schemabuild synth tool_picker --from-log logs/requests.jsonl     # the teacher relabels the logged inputs

A line is {"messages": [...the request's messages..., {"role": "assistant", "content": answer}], "model",
"created", "id", "route", "finish_reason", "usage", "response_format"?}: the shape `synth --from-log` reads (it
takes the last user message). Nothing from the HTTP layer is written: no API key, no header, no client address.

Each line goes out in one `os.write` on an O_APPEND descriptor, before the answer is returned: concurrent
writers never interleave, a kill -9 never leaves half a line, and no answer a client received is missing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from schemabuild.config import ConfigError


class RequestLog:
    """An append-only JSONL file, rotated by size (PATH → PATH.1, PATH.2, ...; nothing is deleted)."""

    def __init__(self, path: str | os.PathLike, max_bytes: int = 100_000_000):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"--log-requests {self.path}: {exc.strerror or exc}") from None

    def write(self, row: dict) -> None:
        """Append `row` as one line (one write call), rotating first when the line would pass max_bytes."""
        line = (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            size = os.fstat(self._fd).st_size
            if size and size + len(line) > self.max_bytes:
                self._rotate()
            written = os.write(self._fd, line)
            if written != len(line):  # a full disk; never leave a torn line behind a good one
                raise OSError(f"request log {self.path}: short write ({written} of {len(line)} bytes)")

    def _rotate(self) -> None:
        n = 1
        while self.path.with_name(f"{self.path.name}.{n}").exists():
            n += 1
        os.replace(self.path, self.path.with_name(f"{self.path.name}.{n}"))
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def log_row(route: str, model: str, messages: list[dict], answer: str, result, completion_id: str | None = None,
            response_format: dict | None = None) -> dict:
    """One log line: the request's messages plus the answer as an assistant turn, and what produced it."""
    row = {"messages": [*messages, {"role": "assistant", "content": answer}], "model": model,
           "created": int(time.time()), "id": completion_id, "route": route, "finish_reason": result.finish_reason,
           "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}}
    if response_format is not None:
        row["response_format"] = response_format
    return row
