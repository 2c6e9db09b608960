"""A running batch for continuous batching: its live rows and their shared KV cache and attention mask; the KV of
shared prompt prefixes, kept to start new rows from."""

from __future__ import annotations

import collections
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


class PrefixCache:
    """The KV of shared prompt prefixes (a task's system prompt and the chat template up to the user's text), least
    recently used dropped past `size` entries. Keyed by (adapter, prefix token ids): the same ids on another adapter
    give other keys and values. An entry is one (keys, values) pair per layer, each [1, kv heads, length, head dim];
    it is never written to (rows start from copies), so one entry serves any number of rows.
    """

    def __init__(self, size: int = 8):
        self.size = size
        self._entries: collections.OrderedDict = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[tuple[str | None, tuple[int, ...]]]:
        """(adapter, prefix ids) of every entry, least recently used first."""
        return list(self._entries)

    def get(self, adapter: str | None, ids: tuple[int, ...]):
        """The entry for (adapter, ids), now the most recently used; None when not kept."""
        entry = self._entries.get((adapter, ids))
        if entry is not None:
            self._entries.move_to_end((adapter, ids))
        return entry

    def put(self, adapter: str | None, ids: tuple[int, ...], layers: list) -> None:
        if self.size < 1:
            return
        self._entries[(adapter, ids)] = layers
        self._entries.move_to_end((adapter, ids))
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def start_from_prefixes(entries: list, device):
    """(DynamicCache, attention mask) for new rows starting from prefix KV: entry i (a `PrefixCache` entry, or None
    for a row without one) fills row i's columns, left-padded to the longest entry; padding is masked out."""
    import torch
    from transformers import DynamicCache

    lengths = [0 if e is None else e[0][0].shape[2] for e in entries]
    width = max(lengths)
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], dtype=torch.long, device=device)
    model = next(e for e in entries if e is not None)
    layers = []
    for i, (k0, v0) in enumerate(model):
        keys, values = [], []
        for e, n in zip(entries, lengths):
            k, v = (k0[:, :, :0], v0[:, :, :0]) if e is None else e[i]
            if n < width:
                pad = list(k0.shape)
                pad[2] = width - n
                k, v = torch.cat([k0.new_zeros(pad), k], dim=2), torch.cat([v0.new_zeros(pad), v], dim=2)
            keys.append(k)
            values.append(v)
        layers.append((torch.cat(keys, dim=0), torch.cat(values, dim=0)))
    return DynamicCache(layers), mask
