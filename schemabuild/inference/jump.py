"""Jump-forward: the tokens for the text a grammar forces next, tokenized as training tokenized whole targets."""

from __future__ import annotations

from schemabuild.inference.grammars import allowed_ids

# Jump-forward takes at most this much forced text per step; the rest is forced again on the next step.
MAX_JUMP_BYTES = 256
MAX_JUMP_TOKENS = 64


def clip_utf8(text: str, limit: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `limit` bytes."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def token_splits(token_bytes: list[bytes], vocab_size: int, special: set[int]):
    """(first byte of each token, -1 for special ones; for every proper prefix u of a vocabulary token, the set of
    bytes that follow u in some token; the longest token in bytes): the token-boundary check's tables."""
    import numpy as np

    first = np.full(vocab_size, -1, dtype=np.int16)
    splits: dict[bytes, set[int]] = {}
    longest = 1
    for i, tok in enumerate(token_bytes[:vocab_size]):
        if i in special or not tok:
            continue
        first[i] = tok[0]
        longest = max(longest, len(tok))
        for k in range(1, len(tok)):
            splits.setdefault(tok[:k], set()).add(tok[k])
    return first, splits, longest


class JumpForward:
    """Forced tokens for one model's tokenizer (the tables are built on first use)."""

    def __init__(self, tokenizer, backend, stop_ids: list[int]):
        self.tokenizer, self.backend = tokenizer, backend
        self.special = set(getattr(tokenizer, "all_special_ids", []) or []) | set(stop_ids)
        self._tables = None

    def forced_tokens(self, seq, bitmask, b: int) -> list[int]:
        """Tokens for the text the grammar forces after `seq.ids`, accepted by its matcher.

        The forced text is appended to the text so far and the whole is retokenized; the jump happens only
        when that keeps the tokens generated so far, and the last forced token is kept only when no
        vocabulary token could span its end given what the grammar allows next (else the model picks it).
        """
        forced_text = seq.matcher.forced_text()
        if not forced_text:
            return []
        forced_text = clip_utf8(forced_text, MAX_JUMP_BYTES)
        so_far = self.tokenizer.decode(seq.ids, skip_special_tokens=False)
        if "\ufffd" in so_far:  # a character split across tokens: no safe text boundary
            return []
        full = self.tokenizer(so_far + forced_text, add_special_tokens=False)["input_ids"]
        if full[: len(seq.ids)] != seq.ids or len(full) == len(seq.ids):
            return []
        forced = full[len(seq.ids):][:MAX_JUMP_TOKENS]
        clipped = len(forced) < len(full) - len(seq.ids)
        accepted = 0
        for t in forced:
            if not seq.matcher.accept(t):
                break
            accepted += 1
        if accepted < len(forced):
            if accepted:
                seq.matcher.rollback(accepted)
            return []
        text = self.tokenizer.decode(seq.ids + forced, skip_special_tokens=False) if clipped else so_far + forced_text
        if not self.boundary_safe(text, seq.matcher, bitmask, b):
            seq.matcher.rollback(1)
            forced = forced[:-1]
        return forced

    def boundary_safe(self, text: str, matcher, bitmask, b: int) -> bool:
        """True when no vocabulary token can span the end of `text` into what the grammar allows next."""
        import numpy as np

        if self._tables is None:
            self._tables = token_splits(self.backend.token_bytes(), self.backend.vocab_size, self.special)
        first_byte, splits, longest = self._tables
        matcher.fill_mask(bitmask, b)
        firsts = first_byte[allowed_ids(bitmask, b, self.backend.vocab_size)]
        next_bytes = set(np.unique(firsts[firsts >= 0]).tolist())
        if not next_bytes:
            return True
        tail = text.encode("utf-8")[-longest:]
        for k in range(1, len(tail) + 1):
            follow = splits.get(tail[-k:])
            if follow and follow & next_bytes:
                return False
        return True
