"""What every teacher shares: the `Teacher` Protocol, `Labelled` rows, budget and call errors, prices and the
cost ledger, the generation/judge prompts, and lenient parsing of answers.

The teachers themselves: `api` (OpenAI-compatible chat), `batch` (OpenAI Batch API), `offline` (augmentation);
`teachers.make_teacher` picks one.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any, Protocol

from schemabuild.contract import canonical_json, grammar_schema
from schemabuild.errors import TeacherError  # noqa: F401 - re-exported



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

    def __init__(self, message: str, results: list | None = None):
        super().__init__(message)
        self.results = results
        """What the interrupted step finished before the cap (Labelled rows, inputs or scores), if any."""


class CallFailed(Exception):
    """One teacher call gave no answer (retries exhausted, rejected request); the message says why."""


# ---- prices and the ledger ---------------------------------------------------------------------------

# USD per 1M tokens (input, output), standard tier; `--price-in` / `--price-out` override.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "o4-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}
BATCH_DISCOUNT = 0.5  # the Batch API bills half the synchronous price


def price_for(model: str, price_in: float | None = None, price_out: float | None = None
              ) -> tuple[float, float, str | None]:
    """(USD per 1M input tokens, per 1M output tokens, note) for a model; dated snapshots match their family."""
    base = model.rsplit("/", 1)[-1]
    family = max((k for k in PRICES if base == k or base.startswith(k + "-")), key=len, default=None)
    known_in, known_out = PRICES.get(family, (None, None))
    p_in = price_in if price_in is not None else known_in
    p_out = price_out if price_out is not None else known_out
    note = None
    if p_in is None or p_out is None:
        note = f"no price known for {model!r}: cost counted as 0; pass --price-in/--price-out (USD per 1M tokens)"
    return p_in or 0.0, p_out or 0.0, note


@dataclasses.dataclass
class Ledger:
    """Calls, tokens and dollars spent by one teacher; cached calls are counted but not charged."""

    model: str
    price_in: float
    price_out: float
    budget_usd: float | None = None
    note: str | None = None
    calls: int = 0
    cached_calls: int = 0
    failed_calls: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    budget_hit: bool = False

    def charge(self, prompt_tokens: int, completion_tokens: int, discount: float = 1.0) -> None:
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_usd += discount * (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6

    def over_budget(self) -> bool:
        return self.budget_usd is not None and self.cost_usd >= self.budget_usd

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("calls", "cached_calls", "failed_calls", "retries", "prompt_tokens",
                                              "completion_tokens", "budget_usd", "budget_hit", "model",
                                              "price_in", "price_out")}
        out["cost_usd"] = round(self.cost_usd, 10)
        if self.note:
            out["note"] = self.note
        return out


# ---- prompts -----------------------------------------------------------------------------------------

GENERATE_SYSTEM = ("You write realistic, varied user inputs for a task that a small model will be trained on. "
                   'Answer with JSON only: {"inputs": ["...", ...]}.')
JUDGE_SYSTEM = ("You grade answers given for a task. Score how correct and complete the answer is for the input, "
                'from 1 (wrong) to 5 (exactly right). Answer with JSON only: {"reason": "...", "score": 1-5}.')
INPUTS_PER_CALL = 20
MAX_GENERATE_ROUNDS = 5
INPUTS_FORMAT = {"type": "json_schema", "json_schema": {"name": "inputs", "strict": True, "schema": {
    "type": "object", "properties": {"inputs": {"type": "array", "items": {"type": "string"}}},
    "required": ["inputs"], "additionalProperties": False}}}
JUDGE_FORMAT = {"type": "json_schema", "json_schema": {"name": "judgement", "strict": True, "schema": {
    "type": "object", "properties": {"reason": {"type": "string"}, "score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
    "required": ["reason", "score"], "additionalProperties": False}}}


def generate_messages(task, k: int, seed: int, call: int) -> list[dict]:
    """The request for call number `call`: instructions, a rotating sample of examples, one hint of each kind."""
    rng = random.Random(f"{seed}:{call}")
    shown = rng.sample(task.examples, min(8, len(task.examples)))
    lines = [f"- input: {json.dumps(e.input, ensure_ascii=False)} -> answer: {canonical_json(e.output)}" for e in shown]
    steer = [f"{key.rstrip('s') if key.endswith('s') else key}: {rng.choice(values)}"
             for key, values in sorted(task.hints.items()) if values]
    user = (f"The task's instructions (the model sees them as its system prompt):\n<<<\n{task.instructions}\n>>>\n\n"
            "Examples of inputs and the answers expected:\n" + "\n".join(lines) + "\n\n"
            f"Write exactly {k} new inputs. Each must be a realistic input for this task, unlike the examples and "
            "unlike each other in wording, length and intent; cover every kind of answer, including edge cases.\n"
            + (f"This time write as: {'; '.join(steer)}.\n" if steer else "")
            + 'Answer with JSON only: {"inputs": ["...", ...]}')
    return [{"role": "system", "content": GENERATE_SYSTEM}, {"role": "user", "content": user}]


def judge_messages(task, text: str, output_json: str) -> list[dict]:
    user = (f"Task instructions:\n<<<\n{task.instructions}\n>>>\n\nInput:\n<<<\n{text}\n>>>\n\n"
            f"Answer given:\n{output_json}\n\nScore the answer from 1 to 5.")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def label_format(task) -> dict:
    """The structured-output request: the task's grammar schema, strict."""
    return {"type": "json_schema", "json_schema": {"name": task.name[:64], "schema": grammar_schema(task.output),
                                                    "strict": True}}


# ---- lenient parsing ---------------------------------------------------------------------------------

def extract_json(text: str, opener: str = "{") -> str | None:
    """The first complete JSON value starting with `opener` in free text (code fences, prose around it)."""
    decoder = json.JSONDecoder()
    start = text.find(opener)
    while start != -1:
        try:
            _, end = decoder.raw_decode(text, start)
            return text[start:end]
        except json.JSONDecodeError:
            start = text.find(opener, start + 1)
    return None


def parse_inputs(text: str) -> list[str]:
    """Input texts from a generation answer: {"inputs": [...]}, a bare list, or a bulleted list as a last resort."""
    value: Any = None
    for candidate in (text, extract_json(text, "{"), extract_json(text, "[")):
        if candidate:
            try:
                value = json.loads(candidate)
                break
            except json.JSONDecodeError:
                continue
    if isinstance(value, dict):
        value = value.get("inputs", next((v for v in value.values() if isinstance(v, list)), None))
    if isinstance(value, list):
        items = [v.get("input") if isinstance(v, dict) else v for v in value]
        return [v.strip() for v in items if isinstance(v, str) and v.strip()]
    lines = [ln.strip().lstrip("-*•").strip() for ln in text.splitlines()]
    lines = [ln.split(". ", 1)[1] if ln[:1].isdigit() and ". " in ln[:5] else ln for ln in lines]
    return [ln.strip('"') for ln in lines if len(ln) > 2 and not ln.startswith(("{", "}", "[", "]", "```"))]


def parse_score(text: str) -> float | None:
    found = extract_json(text or "")
    try:
        score = json.loads(found)["score"] if found else None
        score = float(score)
    except (TypeError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return score if 1 <= score <= 5 else None


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def labelled_rows(inputs: list[str], results: list) -> list[Labelled]:
    """Labelled rows from per-input results (text or exception); raises BudgetExceeded carrying them if capped."""
    rows, budget = [], None
    for text, result in zip(inputs, results):
        if isinstance(result, BudgetExceeded):
            budget = result
            rows.append(Labelled(text, None, "budget reached"))
        elif isinstance(result, BaseException):
            rows.append(Labelled(text, None, str(result) or type(result).__name__))
        else:
            rows.append(Labelled(text, result))
    if budget is not None:
        raise BudgetExceeded(str(budget), results=rows)
    return rows

