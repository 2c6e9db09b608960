"""The KV side of continuous batching on a transformers model: a running batch (its live sequences and their shared KV
cache and attention mask), the KV of shared prompt prefixes, kept to start new sequences from, and `TorchForward`,
the `forward.Forward` engine built on them."""

from __future__ import annotations

from typing import Any

from schemabuild.inference.lru import LRU


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
        self.filling: Batch | None = None
        """The rows still prefilling (their prompt fed a chunk per step), in a batch of their own."""

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

        for i, mine in enumerate(self.cache.layers):
            if mask.shape[1]:
                keys, values = cache.layers[i].keys, cache.layers[i].values
            else:  # rows with nothing cached yet (no prefix, not yet fed): all padding
                shape = list(mine.keys.shape)
                shape[0], shape[2] = mask.shape[0], 0
                keys, values = mine.keys.new_zeros(shape), mine.values.new_zeros(shape)
            mine.keys = torch.cat([pad(mine.keys, 2), pad(keys, 2)], dim=0)
            mine.values = torch.cat([pad(mine.values, 2), pad(values, 2)], dim=0)
        self.mask = torch.cat([pad(self.mask, 1), pad(mask, 1)], dim=0)
        self.rows += rows

    def split(self, rows: list) -> "Batch":
        """Take `rows` (some of this batch's, in order) out into a batch of their own, with their cache and mask."""
        import torch
        from transformers import DynamicCache

        where = {id(r): i for i, r in enumerate(self.rows)}
        index = torch.tensor([where[id(r)] for r in rows], device=self.mask.device)
        out = Batch(self.adapter)
        out.rows, out.mask = list(rows), self.mask[index]
        out.cache = DynamicCache([(layer.keys.index_select(0, index), layer.values.index_select(0, index))
                                  for layer in self.cache.layers])
        taken = {id(r) for r in rows}
        self.keep([r for r in self.rows if id(r) not in taken])
        return out

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
        self.entries = LRU(size)

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> list[tuple[str | None, tuple[int, ...]]]:
        """(adapter, prefix ids) of every entry, least recently used first."""
        return self.entries.keys()

    def get(self, adapter: str | None, ids: tuple[int, ...]):
        """The entry for (adapter, ids), now the most recently used; None when not kept."""
        return self.entries.get((adapter, ids))

    def put(self, adapter: str | None, ids: tuple[int, ...], layers: list) -> None:
        self.entries.put((adapter, ids), layers)

    def clear(self) -> None:
        self.entries.clear()


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


def start_cache(model, seqs: list, prefixes: PrefixCache, adapter_names: list, mixed: bool, device):
    """The (cache, attention mask) new sequences' prefill starts from: each one's shared prefix KV (computed on its
    first use, then copied from `prefixes`), its tokens taken off the sequence's pending ones; empty without one.
    `adapter_names[i]` is the adapter sequence i runs on (passed per row to the model when `mixed`)."""
    import torch
    from transformers import DynamicCache

    entries = []
    for seq, name in zip(seqs, adapter_names):
        n = prefix_tokens(seq, prefixes)
        if n < 1:
            entries.append(None)
            continue
        entries.append(prefix_kv(model, prefixes, name, tuple(seq.req.prompt_ids[:n]), mixed, device))
        seq.pending = seq.pending[n:]
        seq.n_seen = n
    if all(e is None for e in entries):
        return DynamicCache(), torch.zeros((len(seqs), 0), dtype=torch.long, device=device)
    return start_from_prefixes(entries, device)


def prefix_tokens(seq, prefixes: PrefixCache) -> int:
    """How many of a new sequence's prompt tokens start from shared prefix KV (0: none; never the whole prompt)."""
    return min(seq.req.prefix_len, len(seq.req.prompt_ids) - 1) if prefixes.size > 0 else 0


def prefix_kv(model, prefixes: PrefixCache, adapter: str | None, ids: tuple[int, ...], mixed: bool, device) -> list:
    """The KV of prompt prefix `ids` on `adapter` (the active one unless mixed): from the LRU, else one pass now."""
    import torch
    from transformers import DynamicCache

    entry = prefixes.get(adapter, ids)
    if entry is None:
        out = model(input_ids=torch.tensor([ids], device=device), past_key_values=DynamicCache(),
                    position_ids=torch.arange(len(ids), device=device)[None], use_cache=True,
                    logits_to_keep=1, **({"adapter_names": [adapter]} if mixed else {}))
        entry = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        prefixes.put(adapter, ids, entry)
    return entry


def drop_rejected(cache, mask, rejected: list[int | None]):
    """The (cache, attention mask) without each row's last `rejected[b]` fed positions (draft tokens the model did not
    confirm; None = a finished row, which leaves the batch before the next pass). Columns every row rejects are cut off
    the end; the rest are masked out for their row (positions are explicit, so a hole is like padding)."""
    counts = [r for r in rejected if r is not None]
    cut = min(counts) if counts else 0
    if cut:
        for layer in cache.layers:
            layer.keys = layer.keys[:, :, :-cut]
            layer.values = layer.values[:, :, :-cut]
        mask = mask[:, :-cut]
    width = mask.shape[1]
    for b, r in enumerate(rejected):
        if r is not None and r > cut:
            mask[b, width - (r - cut):] = 0
    return cache, mask


def pass_inputs(seqs: list, pad_id: int, mask, device):
    """(input ids, position ids, grown attention mask) of one forward pass: every sequence's pending tokens,
    right-aligned (left padding inside the step), at the positions that follow what it has already fed."""
    import torch

    width = max(len(seq.pending) for seq in seqs)
    ids_l, mask_l, pos_l = [], [], []
    for seq in seqs:
        n, pad = len(seq.pending), width - len(seq.pending)
        ids_l.append([pad_id] * pad + seq.pending)
        mask_l.append([0] * pad + [1] * n)
        pos_l.append([0] * pad + list(range(seq.n_seen, seq.n_seen + n)))
        seq.n_seen += n
        seq.pending = []
        seq.passes += 1
    mask = torch.cat([mask, torch.tensor(mask_l, device=device)], dim=1)
    return torch.tensor(ids_l, device=device), torch.tensor(pos_l, device=device), mask


class TorchForward:
    """The `forward.Forward` engine over a transformers causal LM: one left-padded DynamicCache per `Batch`."""

    def __init__(self, model, device, vocab_size: int, pad_id: int, mixed: bool):
        self.model, self.device, self.vocab_size = model, device, vocab_size
        self.pad_id, self.mixed = pad_id, mixed
        config = getattr(model, "config", None)
        self.context: int | None = getattr(config, "max_position_embeddings", None)

    def new_batch(self, adapter: str | None) -> Batch:
        return Batch(adapter)

    def start(self, seqs: list, prefixes: PrefixCache, adapter: str | None, adapter_names: list) -> Batch:
        part = Batch(adapter)
        part.rows = list(seqs)
        part.cache, part.mask = start_cache(self.model, seqs, prefixes, adapter_names, self.mixed, self.device)
        return part

    def run(self, batch: Batch, keep: list[int], adapter_names: list | None):
        ids, pos, mask = pass_inputs(batch.rows, self.pad_id, batch.mask, self.device)
        per_row = {"adapter_names": adapter_names} if self.mixed else {}
        out = self.model(  # without padding the model's own causal mask is enough (and cheaper to build)
            input_ids=ids, attention_mask=None if bool(mask.all()) else mask, position_ids=pos,
            past_key_values=batch.cache, use_cache=True, logits_to_keep=max(keep), **per_row,
        )
        batch.cache, batch.mask = out.past_key_values, mask
        return out.logits[:, :, : self.vocab_size].float()

    def drop_rejected(self, batch: Batch, rejected: list[int | None]) -> None:
        batch.cache, batch.mask = drop_rejected(batch.cache, batch.mask, rejected)

    def merge(self, batch: Batch, part: Batch) -> None:
        batch.merge(part.rows, part.cache, part.mask)

    def split(self, part: Batch, rows: list) -> Batch:
        return part.split(rows)
