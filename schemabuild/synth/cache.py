"""The teacher cache: every teacher call's answer in SQLite, keyed by a hash of the request.

A call is written the moment it completes (WAL mode, autocommit), so a killed synthesis loses at most
the calls in flight, and a rerun with the same settings answers every finished call from here.
The same file remembers Batch API jobs in flight (so a rerun resumes them) and small flags such as
"this endpoint rejects response_format".
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    response TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    request_hash TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def call_key(model: str, messages: list[dict], params: dict, response_format: dict | None) -> str:
    """sha256 of everything that decides a teacher's answer: model, messages, parameters, response_format."""
    blob = json.dumps({"model": model, "messages": messages, "params": params, "response_format": response_format},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class TeacherCache:
    """SQLite file of teacher answers (`calls`), Batch API jobs (`batches`) and flags (`meta`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the event loop's thread and tqdm/batch helpers; the lock serialises use.
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process, fast enough
            self._db.executescript(SCHEMA)

    # ---- calls ---------------------------------------------------------------------------------------

    def get(self, key: str) -> dict | None:
        """{"response", "prompt_tokens", "completion_tokens"} for a cached call, else None."""
        with self._lock:
            row = self._db.execute(
                "SELECT response, prompt_tokens, completion_tokens FROM calls WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return {"response": row[0], "prompt_tokens": row[1], "completion_tokens": row[2]}

    def put(self, key: str, model: str, response: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO calls (key, model, response, prompt_tokens, completion_tokens, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key, model, response, int(prompt_tokens or 0), int(completion_tokens or 0), time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    # ---- batch jobs ----------------------------------------------------------------------------------

    def get_batch(self, request_hash: str) -> str | None:
        """The Batch API job id created for this request file, if one was started."""
        with self._lock:
            row = self._db.execute("SELECT batch_id FROM batches WHERE request_hash = ?", (request_hash,)).fetchone()
        return row[0] if row else None

    def put_batch(self, request_hash: str, batch_id: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO batches (request_hash, batch_id, created) VALUES (?, ?, ?)",
                             (request_hash, batch_id, time.time()))

    def drop_batch(self, request_hash: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM batches WHERE request_hash = ?", (request_hash,))

    # ---- flags ---------------------------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def close(self) -> None:
        with self._lock:
            self._db.close()
