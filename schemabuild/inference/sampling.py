"""Choosing the next token of each sequence: greedy, or temperature / top-p with the sequence's own generator."""

from __future__ import annotations


def choose(logits, seqs: list) -> "list[int]":
    """The chosen token per row of `logits` (already grammar-masked): argmax, or a sample for rows with temperature."""
    import torch

    chosen = torch.argmax(logits, dim=-1)
    for b, seq in enumerate(seqs):
        r = seq.req
        if r.temperature <= 0:
            continue
        probs = torch.softmax(logits[b] / r.temperature, dim=-1)
        if r.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            cum = torch.cumsum(sorted_p, dim=-1)
            drop = (cum - sorted_p) >= r.top_p  # keep the smallest prefix reaching top_p (the first always)
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        chosen[b] = torch.multinomial(probs, 1, generator=seq.generator)[0]
    return chosen


def new_generator(req, device):
    """The torch.Generator of a sampled request (seeded when it gives a seed); None for greedy ones."""
    import torch

    if req.temperature <= 0:
        return None
    gen = torch.Generator(device=device)
    if req.seed is not None:
        gen.manual_seed(int(req.seed))
    else:
        gen.seed()
    return gen
