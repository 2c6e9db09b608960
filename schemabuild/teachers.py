"""Teachers: who writes synthetic inputs and labels them (OpenAI-compatible API, OpenAI Batch API, offline).

Every teacher looks alike (the `Teacher` Protocol); `make_teacher` picks one from the environment:
no OPENAI_API_KEY and no OPENAI_BASE_URL → the offline augmentation teacher; `--batch` → the Batch API;
otherwise one chat completion per call against the OpenAI-compatible endpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol


@dataclasses.dataclass
class Labelled:
    """One teacher answer for one input; validation is the pipeline's job, not the teacher's."""

    input: str
    """The input text that was labelled."""
    raw: str | None
    """The teacher's raw answer text (JSON expected), None on failure."""
    error: str | None = None
    """Why there is no answer (e.g. "timeout after 3 retries", "batch line failed: ...")."""


class Teacher(Protocol):
    """What synthesis needs from a teacher."""

    name: str  # "openai" | "batch" | "offline"
    model: str

    async def generate_inputs(self, task, n: int, seed: int) -> list[str]:
        """Up to `n` new, distinct input texts for the task."""
        ...

    async def label(self, task, inputs: list[str]) -> list[Labelled]:
        """One Labelled per input, in the same order as `inputs`."""
        ...

    async def judge(self, task, pairs: list[tuple[str, str]]) -> list[float | None]:
        """A 1-5 score per (input, output_json) pair; None where the teacher gave no usable score."""
        ...

    def ledger(self) -> dict:
        """{"calls", "cached_calls", "prompt_tokens", "completion_tokens", "cost_usd", "budget_usd", "budget_hit"}."""
        ...


class BudgetExceeded(Exception):
    """The spend reached `--budget`; in-flight calls finish, no new uncached call starts."""
