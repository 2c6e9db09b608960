"""Prompt-lookup speculative decoding: drafts copied from the prompt, for greedy rows only, exact.

Task answers copy spans of the user's message (`"query":"cats falling off tables"`). After each step, a greedy
row whose last 1-3 output tokens occur in its prompt proposes the prompt tokens that followed them there (a draft of
up to `MAX_DRAFT`), cut where its grammar refuses one. The next forward pass feeds the draft after the row's own
pending tokens; the decoder then takes the model's own greedy choice at each position in turn and keeps the draft
while it equals that choice (`Decoder._verify`), so the output is exactly plain greedy decoding's, in fewer passes.
The KV of the draft tokens it did not keep is dropped (`kv.drop_rejected`). Sampled rows never draft.

Every row of a pass is padded to the pass's widest row, and on a CPU a pass of many rows costs about its token slots
(rows x width): with many rows a long draft would make every row's pass dearer. So drafts shrink as the batch grows
(`draft_limit`), and a full batch does not draft at all.
"""

from __future__ import annotations

MAX_DRAFT = 8
"""Most draft tokens per row and step."""
MAX_NGRAM = 3
"""Longest output tail looked up in the prompt (then shorter ones, down to one token)."""
PASS_SLOTS = 16
"""Rows x (1 + longest draft) a pass may reach through drafts: 1 row drafts up to MAX_DRAFT, 4 rows up to 3 tokens,
8 rows 1, 9 rows and more none. Measured on 2 loaded CPU cores, 1 thread, the 135M model: 16 rows x 1 token 300 ms,
16 x 3 527 ms, 16 x 9 1045 ms; 1 x 1 121 ms, 1 x 9 259 ms."""


def draft_limit(rows: int) -> int:
    """The most draft tokens a row may feed in a pass of `rows` rows (0: none)."""
    return max(0, min(MAX_DRAFT, PASS_SLOTS // max(1, rows) - 1))


def lookup(prompt: list[int], tail: list[int], k: int, twin: int | None = None) -> list[int]:
    """The (at most `k`) prompt tokens that follow the last occurrence in `prompt` of the longest suffix of `tail`
    (MAX_NGRAM tokens, then fewer) that occurs with at least one token after it; failing that, of `twin` (tail[-1]
    with or without a leading space); [] when none does."""
    grams = [tail[-n:] for n in range(min(MAX_NGRAM, len(tail)), 0, -1)] + ([[twin]] if twin is not None else [])
    for gram in grams:
        n = len(gram)
        for i in range(len(prompt) - n - 1, -1, -1):
            if prompt[i:i + n] == gram:
                return prompt[i + n:i + n + k]
    return []


def space_twins(token_bytes: list[bytes]) -> dict[int, int]:
    """For each token, the token that is the same text with a leading space added or removed, where the vocabulary
    has one: an answer's first word (`"query":"cats`) is in the message with a space before it (` cats`)."""
    ids = {b: i for i, b in enumerate(token_bytes) if b}
    twins = {}
    for i, b in enumerate(token_bytes):
        other = b[1:] if b.startswith(b" ") else b" " + b
        if b and other in ids:
            twins[i] = ids[other]
    return twins


def grammar_prefix(matcher, draft: list[int]) -> list[int]:
    """The longest prefix of `draft` that `matcher` accepts token by token; the matcher is left as it was."""
    accepted = 0
    for tok in draft:
        if not matcher.accept(tok):
            break
        accepted += 1
    if accepted:
        matcher.rollback(accepted)
    return draft[:accepted]


class PromptLookup:
    """Drafts for one decoder's sequences (its stop ids; its vocabulary's space twins, built on first use)."""

    def __init__(self, backend, stop_ids: list[int]):
        self.backend, self.stop_ids = backend, set(stop_ids)
        self.twins: dict[int, int] | None = None

    def draft(self, seq, k: int = MAX_DRAFT) -> list[int]:
        """The draft (at most `k` tokens) for `seq`'s next pass: prompt tokens that may follow its output, without
        stop tokens, within its token budget and accepted by its grammar; [] for a sampled or finished row, or when
        nothing matches."""
        room = seq.req.max_tokens - len(seq.ids) - 1  # the pass also yields the model's own token after the draft
        if seq.req.temperature > 0 or seq.finish is not None or min(room, k) < 1 or not seq.ids:
            return []
        if self.twins is None:
            self.twins = space_twins(self.backend.token_bytes()[: self.backend.vocab_size])
        draft = lookup(seq.req.prompt_ids, seq.ids[-MAX_NGRAM:], min(k, room), self.twins.get(seq.ids[-1]))
        for i, tok in enumerate(draft):
            if tok in self.stop_ids:
                draft = draft[:i]
                break
        if draft and seq.matcher is not None:
            draft = grammar_prefix(seq.matcher, draft)
        return draft
