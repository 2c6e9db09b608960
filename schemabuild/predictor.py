"""Predict: load a model through its contract → constrained decoding → validated task outputs.

    predictor = Predictor.from_run(task)            # the task's latest run
    predictor.predict("billy play some Daft Punk").output   # ToolPick(tool='music.play', query='Daft Punk')

Prompts come only from `contract.encode_prompt`, the grammar only from `contract.grammar_schema`, the stop
ids only from the model's `contract.json`, so predictions see exactly what training saw.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any

from pydantic import BaseModel, ValidationError
from tqdm.auto import tqdm

from schemabuild.contract import encode_prompt, grammar_schema, prompt_prefix, shared_prefix_len, system_prompt
from schemabuild.decode import Decoder, Request
from schemabuild.models import load_base, load_model, resolve_device  # noqa: F401 - resolve_device re-exported
from schemabuild.runs import resolve_run


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


class Predictor:
    """A task's model behind the constrained decoder."""

    def __init__(self, task, model, tokenizer, contract: dict, device=None, jump_forward: bool = True,
                 prefix_cache: int = 8):
        self._task = task
        self._tokenizer = tokenizer
        self._contract = contract
        self.schema = grammar_schema(task.output)
        self._prefix = prompt_prefix(tokenizer, system_prompt(task, contract))  # its KV is reused (prefix_cache)
        self._decoder = Decoder(model, tokenizer, stop_ids=list(contract["stop_ids"]), device=device,
                                jump_forward=jump_forward, prefix_cache=prefix_cache)
        self._decoder.compile(self.schema)  # pay the grammar compile at load, not on the first request

    # -- setup --

    @classmethod
    def from_model_dir(cls, task, model_dir, device=None, prefix_cache: int = 8, precision=None) -> "Predictor":
        """Load `model_dir` (full weights or a PEFT adapter) after checking its contract against `task`; `precision`
        (fp32 / bf16 / int8 / auto, or a resolved precision.Precision) as in models.load_model."""
        device = resolve_device(device)
        model, tokenizer, contract = load_model(task, model_dir, device, precision=precision)
        return cls(task, model, tokenizer, contract, device=device, prefix_cache=prefix_cache)

    @classmethod
    def from_run(cls, task, run=None, runs_dir=None, device=None, precision=None) -> "Predictor":
        """The model of `run` (a path or run id; default: the task's latest run)."""
        return cls.from_model_dir(task, resolve_run(task.name, run, runs_dir, need="model") / "model", device,
                                  precision=precision)

    @classmethod
    def from_base(cls, task, base_dir_or_id, device=None) -> "Predictor":
        """An un-fine-tuned base model (for `eval --compare base`): same prompts and constrained decoding."""
        device = resolve_device(device)
        # The un-tuned base never saw the student prompt: it gets the full instructions (the "before" of before/after).
        model, tokenizer, contract = load_base(task, base_dir_or_id, device)
        return cls(task, model, tokenizer, contract, device=device)

    # -- properties --

    @property
    def task(self):
        return self._task

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def decoder(self):
        return self._decoder

    @property
    def contract(self) -> dict:
        return self._contract

    # -- run --

    def request(self, text: str, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                seed: int | None = None):
        """The decode Request for one input text."""
        ids = encode_prompt(self._tokenizer, system_prompt(self._task, self._contract), text)
        return Request(prompt_ids=ids, schema=self.schema, max_tokens=max_tokens, temperature=temperature,
                       top_p=top_p, seed=seed, prefix_len=shared_prefix_len(self._prefix, ids))

    def generate_raw(self, requests) -> list:
        """Decoder results for ready-made Requests (one batch)."""
        return self._decoder.generate(list(requests))

    def predict(self, text: str, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                seed: int | None = None) -> Prediction:
        """One input text → one Prediction."""
        t0 = time.perf_counter()
        [result] = self._decoder.generate([self.request(text, max_tokens, temperature, top_p, seed)])
        return self.to_prediction(result, (time.perf_counter() - t0) * 1000)

    def predict_many(self, texts: list[str], batch_size: int = 16, progress: bool = True,
                     max_tokens: int = 256) -> list[Prediction]:
        """Greedy predictions for `texts`, decoded `batch_size` at a time."""
        out: list[Prediction] = []
        bar = tqdm(total=len(texts), desc=f"predict {self._task.name}", unit="input", disable=not progress)
        for start in range(0, len(texts), max(1, batch_size)):
            chunk = texts[start:start + max(1, batch_size)]
            t0 = time.perf_counter()
            results = self._decoder.generate([self.request(t, max_tokens) for t in chunk])
            ms = (time.perf_counter() - t0) * 1000
            out.extend(self.to_prediction(r, ms) for r in results)
            bar.update(len(chunk))
        bar.close()
        return out

    def to_prediction(self, result, latency_ms: float) -> Prediction:
        """A decoder Result as a Prediction: validated output, or None with the reason."""
        output, error = None, None
        if result.finish_reason != "stop":
            error = f"the output did not finish within {result.completion_tokens} tokens"
        else:
            try:
                output = self._task.output.model_validate_json(result.text)
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"]) or "(root)"
                error = f"field {loc!r}: {err['msg']}"
        return Prediction(
            output=output, text=result.text, finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            latency_ms=latency_ms, confidence=field_confidence(self._tokenizer, result, self._decoder.stop_ids),
            error=error,
        )


# ---- helpers ---------------------------------------------------------------------------------------

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


def prediction_dict(p: Prediction) -> dict[str, Any]:
    """A Prediction as JSON-ready data."""
    d = dataclasses.asdict(p)
    d["output"] = p.output.model_dump(mode="json") if p.output is not None else None
    return d
