"""Choosing a teacher: who writes synthetic inputs and labels them (OpenAI-compatible API, OpenAI Batch API, offline).

Every teacher looks alike (the `Teacher` Protocol in `protocol`); `make_teacher` picks one from the environment:
no OPENAI_API_KEY and no OPENAI_BASE_URL → the offline augmentation teacher; `--batch` → the Batch API;
otherwise one chat completion per call against the OpenAI-compatible endpoint.

Every call goes through the SQLite cache (`synth.cache`) and the cost ledger; a rerun with the same
settings is answered from the cache without a single HTTP request.
"""

from __future__ import annotations

import os
import sys

from schemabuild.synth.api import OpenAITeacher
from schemabuild.synth.batch import BatchTeacher
from schemabuild.synth.cache import TeacherCache
from schemabuild.synth.offline import OfflineTeacher
from schemabuild.synth.protocol import Teacher


def teacher_configured() -> bool:
    """Whether an LLM teacher is configured (OPENAI_API_KEY or OPENAI_BASE_URL); without one, the offline teacher."""
    return bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"))


def expected_teacher(cfg) -> str:
    """The teacher `make_teacher` picks in this environment: offline, batch or openai."""
    if not teacher_configured():
        return "offline"
    return "batch" if cfg.batch else "openai"


def make_teacher(task, cfg, cache_file) -> Teacher:
    """The offline teacher without OPENAI_API_KEY / OPENAI_BASE_URL, else the Batch API or chat teacher.

    Prints one line saying which teacher and model are used.
    """
    if not teacher_configured():
        teacher = OfflineTeacher(task, cfg)
        print(f"teacher: offline augmentation of the {len(task.examples)} examples "
              "(set OPENAI_API_KEY or OPENAI_BASE_URL to use a model)", file=sys.stderr)
        return teacher
    cache = TeacherCache(cache_file)
    teacher = BatchTeacher(cfg, cache) if cfg.batch else OpenAITeacher(cfg, cache)
    base_url = os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    how = "Batch API" if cfg.batch else f"concurrency {cfg.concurrency}"
    print(f"teacher: {cfg.teacher_model} at {base_url} ({how}, cache {cache_file})", file=sys.stderr)
    return teacher
