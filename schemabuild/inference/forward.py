"""The forward-pass seam: what the Decoder needs from an inference engine (`Forward`), whatever runs the model.

Two engines implement it: `kv.TorchForward` (a transformers model, one left-padded DynamicCache per batch) and
`llamacpp.LlamaCppForward` (a llama.cpp context over a GGUF, one KV sequence slot per row). Everything else in the
decode loop (grammar masks, jump-forward, speculation, continuous batching) is the Decoder's, on either.

A batch is whatever the engine's `new_batch`/`start` return: it has `adapter`, `rows` (the live `Sequence`s, in order),
`keep(rows)` (keep only these rows; the others' KV is freed) and `filling` (None, or a batch of the rows still
prefilling, which the Decoder feeds a chunk of prompt per step and moves into `rows` once their prompt is in).
The serving scheduler calls `keep` directly.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

ENGINES = ("torch", "llamacpp")  # --engine: transformers in fp32/bf16/int8 (precision.py), or llama.cpp over a Q8_0 GGUF


@runtime_checkable
class Forward(Protocol):
    """An engine's forward pass over batches of sequences, with their KV."""

    vocab_size: int
    """Logit columns the Decoder reads (the tokenizer's ids)."""
    context: int | None
    """Positions a sequence may hold (prompt + output); None when unknown."""
    device: Any
    """The torch device the logits (and the sequences' generators) live on."""

    def new_batch(self, adapter: str | None) -> Any:
        """An empty running batch on `adapter`."""

    def start(self, seqs: list, prefixes, adapter: str | None, adapter_names: list) -> Any:
        """A batch of the new sequences `seqs`, each starting from its shared prompt prefix's KV where `prefixes` (a
        `kv.PrefixCache`) keeps it or can: those tokens leave the sequence's `pending` and count in its `n_seen`."""

    def run(self, batch, keep: list[int], adapter_names: list | None) -> Any:
        """Feed every row's pending tokens at positions n_seen.. (then n_seen grows, pending empties, passes + 1);
        returns float logits [rows, max(keep), vocab_size]: row b's last keep[b] fed positions, right-aligned."""

    def drop_rejected(self, batch, rejected: list[int | None]) -> None:
        """Forget each row's last `rejected[b]` fed positions (None: the row finished and leaves the batch)."""

    def merge(self, batch, part) -> None:
        """Append the rows of `part` (a batch from `start` or `split`) below `batch`'s rows; `part` is used up. Rows
        may differ in positions fed (`n_seen`), and `part`'s rows may have fed nothing yet."""

    def split(self, part, rows: list) -> Any:
        """Take `rows` (some of `part`'s, in order) out of `part` into a new batch, their KV with them."""
