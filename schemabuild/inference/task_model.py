"""A task's model: prompt (or chat messages) → decode Request; Result → validated Prediction with confidence.

The one object under both `Predictor` (local) and the server's `Served`. Prompts come only from
`contract.encode_prompt`, the grammar only from `contract.grammar_schema` (compiled once, here), the stop ids
only from the model's `contract.json`, so predictions see exactly what training saw.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from pydantic import BaseModel

from schemabuild.contract import (encode_prompt, grammar_schema, prompt_prefix, shared_prefix_len, student_prompt,
                                  system_prompt)
from schemabuild.inference.request import Request
from schemabuild.task import TaskError


class PromptTooLong(ValueError):
    """The prompt leaves no room in the model's context for a single output token."""


@dataclasses.dataclass
class Prediction:
    """One prediction: the validated output (None when the text did not complete or validate) and its numbers."""

    output: BaseModel | None
    """The validated `task.output` instance; None when finish_reason is "length" or validation failed."""
    text: str
    """The generated JSON text."""
    finish_reason: str
    """"stop" or "length"."""
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    """Wall time of the decode call this prediction came from (the whole batch for `predict_many`)."""
    confidence: dict[str, float]
    """Per top-level field: the product of the grammar-masked probabilities of the tokens that wrote its value."""
    error: str | None = None
    """Why `output` is None (one line), else None."""


class TaskModel:
    """One task on a decoder (shared by the adapters of one base): its prompts, its grammar, its predictions."""

    def __init__(self, task, decoder, contract: dict, adapter: str | None = None):
        self.task, self.decoder, self.adapter = task, decoder, adapter
        self.contract = dict(contract or {})
        self.tokenizer = decoder.tokenizer
        self.system = system_prompt(task, self.contract)
        self.schema = grammar_schema(task.output)
        self.prefix = prompt_prefix(self.tokenizer, self.system)  # its KV is reused (the decoder's prefix cache)
        self.context: int | None = decoder.context
        decoder.compile(self.schema)  # pay the grammar compile at load, not on the first request

    # -- prompt → request --

    def prompt_ids(self, text: str | list[dict], system: str | None = None) -> list[int]:
        """Prompt ids for an input text, or a chat's user/assistant turns, through the contract.

        `system`: a client's own system message. None, or one repeating the task's instructions or student prompt,
        gives the model's own system prompt (from its contract); another replaces it. A lone input text gives
        exactly what training saw.
        """
        given = (system or "").strip()
        own = not given or given in (self.task.instructions.strip(), student_prompt(self.task))
        if not isinstance(text, str) and len(text) == 1 and text[0]["role"] == "user":
            text = text[0]["content"]
        return encode_prompt(self.tokenizer, self.system if own else given, text)

    def request(self, prompt_ids: list[int], schema: Any = "task", max_tokens: int = 256, temperature: float = 0.0,
                top_p: float = 1.0, seed: int | None = None) -> Request:
        """The decode Request: `schema` "task" = the task's grammar schema (None = any JSON object). max_tokens is
        capped at what the model's context leaves; PromptTooLong when it leaves nothing."""
        if self.context:
            room = self.context - len(prompt_ids)
            if room < 1:
                raise PromptTooLong(f"the prompt is {len(prompt_ids)} tokens; the model's context is "
                                    f"{self.context} tokens")
            max_tokens = min(max_tokens, room)  # capped at what fits, as OpenAI-compatible servers do
        return Request(prompt_ids=prompt_ids, schema=self.schema if schema == "task" else schema,
                       max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, adapter=self.adapter,
                       prefix_len=shared_prefix_len(self.prefix, prompt_ids))

    # -- result → prediction --

    def prediction(self, result, latency_ms: float) -> Prediction:
        """A decoder Result as a Prediction: validated output, or None with the reason."""
        output, error = None, None
        if result.finish_reason != "stop":
            error = f"the output did not finish within {result.completion_tokens} tokens"
        else:
            try:
                output = self.task.validate_output(result.text)
            except TaskError as exc:
                error = str(exc).split(": ", 2)[-1]  # "field 'x': ..." without the task and label
        return Prediction(output=output, text=result.text, finish_reason=result.finish_reason,
                          prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                          latency_ms=latency_ms, confidence=self.confidence(result), error=error)

    def confidence(self, result) -> dict[str, float]:
        """Per top-level field: the probability the model gave that field's value (see `field_confidence`)."""
        return field_confidence(self.tokenizer, result, self.decoder.stop_ids)


def value_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character span of each top-level field's value in a JSON object text ({} when it is not one)."""
    decoder = json.JSONDecoder()
    spans: dict[str, tuple[int, int]] = {}
    i = 0
    try:
        if not text.startswith("{"):
            return {}
        i = 1
        while i < len(text) and text[i] != "}":
            key, i = decoder.raw_decode(text, i)
            if text[i] != ":":
                return spans
            start = i + 1
            _, i = decoder.raw_decode(text, start)
            spans[str(key)] = (start, i)
            if i < len(text) and text[i] == ",":
                i += 1
    except (ValueError, IndexError):
        pass
    return spans


def field_confidence(tokenizer, result, stop_ids: list[int]) -> dict[str, float]:
    """Per top-level field: product of the probabilities of the tokens overlapping its value's text."""
    ids = [t for t in result.token_ids if t not in stop_ids]
    lps = [lp for t, lp in zip(result.token_ids, result.token_logprobs) if t not in stop_ids]
    spans = value_spans(result.text)
    if not spans:
        return {}
    # Token end offsets from decoding growing prefixes (robust to multi-byte characters split across tokens).
    ends, prev = [], 0
    for k in range(1, len(ids) + 1):
        n = len(tokenizer.decode(ids[:k], skip_special_tokens=False))
        ends.append(max(n, prev))
        prev = ends[-1]
    conf = {}
    for name, (s, e) in spans.items():
        total, start = 0.0, 0
        for end, lp in zip(ends, lps):
            if start < e and end > s:
                total += lp
            start = end
        conf[name] = math.exp(total)
    return conf

