"""What goes into the decoder and what comes out: `Request`, `Result`, and `Sequence` (one row of a running batch)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# Below this, logits / temperature overflow float32 (1e-320 → inf → NaN probabilities).
MIN_TEMPERATURE = 1e-3


@dataclasses.dataclass
class Request:
    """One generation request."""

    prompt_ids: list[int]
    """Prompt token ids (from `contract.encode_prompt`)."""
    schema: dict | None
    """JSON schema to follow (task schemas already through `contract.grammar_schema`); None = any JSON (json_object mode)."""
    max_tokens: int = 256
    """Most completion tokens, the stop token included."""
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass (with temperature > 0)."""
    seed: int | None = None
    """Seed of this request's own torch.Generator (sampling only)."""
    adapter: str | None = None
    """PEFT adapter name on a shared base; None = the model as loaded."""
    constrained: bool = True
    """False = no grammar at all (benchmarks and debugging only; `schema` is ignored)."""
    grammar: Any = None
    """A grammar already compiled for `schema` by the decoder's backend (the server compiles off the decode thread)."""
    prefix_len: int = 0
    """Leading prompt tokens shared by many requests (`contract.shared_prefix_len`), whose KV the decoder keeps and
    reuses; 0 = none. The ids themselves are the cache key, so a wrong length only costs a cache entry."""


@dataclasses.dataclass
class Result:
    """What one request produced."""

    token_ids: list[int]
    """Completion ids, the stop token included when finish_reason is "stop"."""
    text: str
    """The completion text without the stop token."""
    finish_reason: str
    """"stop" (stop token chosen or the grammar allows nothing else) or "length"."""
    token_logprobs: list[float]
    """Per token of `token_ids`: log-probability under the grammar-masked distribution (0.0 for forced tokens)."""
    forward_passes: int
    """Model forward passes this request took part in (prefill included)."""
    prompt_tokens: int
    completion_tokens: int


@dataclasses.dataclass(eq=False)
class Sequence:
    """Decode state of one request inside a running batch (`Decoder.step` makes and advances them)."""

    req: Request
    matcher: Any
    """The grammar backend's matcher for this sequence; None when unconstrained."""
    generator: Any
    """Its own torch.Generator (sampling only)."""
    pending: list[int]
    """Tokens the next forward pass feeds (the prompt, then the token just chosen plus any forced ones, then
    `draft`)."""
    draft: list[int] = dataclasses.field(default_factory=list)
    """The end of `pending` that is a guess (prompt-lookup speculation), kept only where the model confirms it."""
    n_seen: int = 0
    """Positions already in the KV cache."""
    ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    passes: int = 0
    finish: str | None = None
    tag: Any = None
    """The caller's handle for this sequence (the server's job)."""


def check_request(r: Request, vocab_size: int, adapters: set[str]) -> None:
    """Raise ValueError when `r` cannot be decoded by a model with `vocab_size` tokens and these LoRA adapters."""
    if not r.prompt_ids:
        raise ValueError("prompt_ids is empty")
    if min(r.prompt_ids) < 0 or max(r.prompt_ids) >= vocab_size:
        raise ValueError(f"prompt_ids: token ids must be in [0, {vocab_size})")
    if r.max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not 0 <= r.prefix_len <= len(r.prompt_ids):
        raise ValueError("prefix_len must be in [0, len(prompt_ids)]")
    if not (math.isfinite(r.temperature) and r.temperature >= 0):
        raise ValueError("temperature must be a finite number >= 0")
    if 0 < r.temperature < MIN_TEMPERATURE:
        raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
    if not 0 < r.top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    if r.adapter is not None and r.adapter not in adapters:
        raise ValueError(f"unknown adapter {r.adapter!r} (loaded: {', '.join(sorted(adapters)) or 'none'})")
