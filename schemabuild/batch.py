"""A running batch for continuous batching: its live rows and their shared KV cache and attention mask."""

from __future__ import annotations

from typing import Any


class Batch:
    """A running batch on one adapter: its live rows and their shared KV cache and attention mask.

    The cache has one column per position any row has fed; a row's columns from before it joined (and the
    padding inside a step) are masked out for it. `Decoder.step` adds rows and advances them; rows leave as
    soon as they finish, and columns no live row uses are dropped, so memory follows the rows in flight.
    """

    def __init__(self, adapter: str | None = None):
        self.adapter = adapter
        self.rows: list = []
        self.cache: Any = None
        self.mask: Any = None

    def tokens(self) -> int:
        """KV positions held (rows × columns)."""
        return 0 if self.mask is None else int(self.mask.shape[0] * self.mask.shape[1])

    def merge(self, rows: list, cache, mask) -> None:
        """Append `rows` (with their own cache and mask) below the running rows, left-padding the shorter."""
        import torch

        if not self.rows:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])

        def pad(t, dim: int):
            short = width - t.shape[dim]
            if not short:
                return t
            shape = list(t.shape)
            shape[dim] = short
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([pad(mine.keys, 2), pad(theirs.keys, 2)], dim=0)
            mine.values = torch.cat([pad(mine.values, 2), pad(theirs.values, 2)], dim=0)
        self.mask = torch.cat([pad(self.mask, 1), pad(mask, 1)], dim=0)
        self.rows += rows

    def keep(self, rows: list) -> None:
        """Keep only `rows` (in order); drop the cache columns no kept row attends to once they are many."""
        import torch

        if len(rows) == len(self.rows):
            return
        if not rows:
            self.rows, self.cache, self.mask = [], None, None
            return
        where = {id(r): i for i, r in enumerate(self.rows)}
        index = torch.tensor([where[id(r)] for r in rows], device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.rows = list(rows)
        used = self.mask.any(dim=0)
        unused = int((~used).sum())
        if unused >= 16 and unused * 4 >= self.mask.shape[1]:  # positions and rotary keys are absolute: safe
            cols = torch.nonzero(used)[:, 0]
            for layer in self.cache.layers:
                layer.keys = layer.keys.index_select(2, cols)
                layer.values = layer.values.index_select(2, cols)
            self.mask = self.mask[:, cols]
