"""Settings of `schemabuild serve`: one dataclass, each field a CLI flag."""

import dataclasses
import os
from typing import Literal

from schemabuild.config import ConfigError
from schemabuild.inference.decoder import PREFILL_CHUNK
from schemabuild.inference.forward import ENGINES
from schemabuild.inference.grammars import DEFAULT_BACKEND
from schemabuild.precision import PRECISIONS


@dataclasses.dataclass
class ServeConfig:
    """Settings of `schemabuild serve` (each field is a CLI flag)."""

    host: str = "127.0.0.1"
    """Address to bind (loopback by default; anything else exposes the API to the network)."""
    port: int = 8000
    """Port to listen on."""
    run: str | None = None
    """Run directory or run id to serve (only with one task) [default: each task's latest run]."""
    api_key: str | None = None
    """Require `Authorization: Bearer KEY` on every route but /healthz [default: $SCHEMABUILD_API_KEY]."""
    max_body_bytes: int = 1_000_000
    """Largest request body accepted (413 above)."""
    max_tokens_cap: int = 1024
    """Largest max_tokens a request may ask for (400 above)."""
    default_max_tokens: int = 256
    """max_tokens when a request gives none."""
    request_timeout_s: float = 60.0
    """Seconds a request may go without progress: waiting in the queue, or between two decode steps once it runs
    (504 after). A long answer that is still decoding is never cut off."""
    max_queue: int = 256
    """Requests waiting for the decoder at most; more get 429 with Retry-After."""
    max_batch: int = 32
    """Requests decoded together at most."""
    batch_window_ms: float = 3.0
    """How long an idle batcher waits for company before its first step (a running batch admits at every step)."""
    prefix_cache: int = 8
    """Shared prompt prefixes (system prompt and chat template up to the user's text) whose KV each model keeps and
    reuses instead of computing it again for every request; 0 = off."""
    prefill_chunk: int = PREFILL_CHUNK
    """Chunked prefill: while other requests decode, a joining request's prompt (after any reused prefix) is fed at
    most this many tokens per decode step, so a long prompt does not stall them; 0 = the whole prompt in one pass."""
    mixed_adapters: bool = False
    """LoRA adapters on one base decode in one running batch, each row with its own adapter (PEFT adapter_names),
    instead of one batch per adapter taking turns; answers are the same (off: not faster on CPU here)."""
    max_tokens_in_flight: int = 32768
    """KV budget: prompt + max_tokens summed over the requests admitted and not finished; more get 429."""
    log_requests: str | None = None
    """Append every answered request and its answer to this file as OpenAI chat JSONL (what `synth --from-log`
    reads); no keys or headers are written [default: off]."""
    log_max_bytes: int = 100_000_000
    """Rotate the request log past this size: PATH becomes PATH.1 (then .2, ...; nothing is deleted)."""
    device: str | None = None
    """torch device [default: cuda when available, else cpu]."""
    precision: str = "auto"
    """Weights: fp32, bf16, int8 or auto (cuda: bf16; a CPU with avx512_bf16/amx_bf16: bf16; other CPUs: fp32;
    announced in one line at start). int8 (dynamic) is faster on CPU but changes answers: never chosen by auto."""
    compile_timeout_s: float = 10.0
    """Seconds a client schema's grammar may take to compile (400 invalid_schema after; the result is cached)."""
    compile_memory_mb: int = 2048
    """Memory a grammar compile may take, in a child process (400 invalid_schema above)."""
    grammar_backend: Literal["xgrammar", "llguidance"] = DEFAULT_BACKEND
    """Grammar engine for constrained decoding: xgrammar or llguidance (same answers on task schemas)."""
    engine: Literal["torch", "llamacpp"] = "torch"
    """Forward passes: torch (transformers, in --precision) or llamacpp (llama.cpp over the run's Q8_0 GGUF, written
    to <run>/gguf/ on first use; needs llama-cpp-python). The decoding (grammar, jump-forward, speculation) is ours on
    both; llamacpp's answers are Q8_0's, not fp32's."""
    speculate: bool = True
    """Greedy requests feed drafts copied from their prompt (answers often copy the message) and keep what the model
    confirms: the same answers in fewer forward passes."""

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get("SCHEMABUILD_API_KEY") or None
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("--api-key: must not be empty")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port: {self.port} is not a port number (0-65535)")
        for name in ("max_body_bytes", "max_tokens_cap", "default_max_tokens", "max_queue", "max_batch", "max_tokens_in_flight",
                     "log_max_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ConfigError("--default-max-tokens: must not exceed --max-tokens-cap")
        if self.compile_timeout_s <= 0:
            raise ConfigError("--compile-timeout-s: must be positive")
        if self.compile_memory_mb < 64:
            raise ConfigError("--compile-memory-mb: must be at least 64")
        if self.request_timeout_s <= 0:
            raise ConfigError("--request-timeout-s: must be positive")
        if self.prefix_cache < 0:
            raise ConfigError("--prefix-cache: must not be negative")
        if self.prefill_chunk < 0:
            raise ConfigError("--prefill-chunk: must not be negative")
        if self.grammar_backend not in ("xgrammar", "llguidance"):
            raise ConfigError(f"--grammar-backend {self.grammar_backend}: expected xgrammar or llguidance")
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine {self.engine}: expected one of {', '.join(ENGINES)}")
        if self.engine == "llamacpp" and self.mixed_adapters:
            raise ConfigError("--mixed-adapters: not with --engine llamacpp (it serves one merged GGUF per model)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision}: expected one of {', '.join(PRECISIONS)}")
        if self.batch_window_ms < 0:
            raise ConfigError("--batch-window-ms: must not be negative")
