"""The validation chain for synthesized pairs; every rejected row keeps its stage and reason.

parse → pydantic → jsonschema → task validators → exact dedup → near-dup → decontamination → (judge)

Inputs are compared after `normalize` (lowercase, punctuation stripped, whitespace collapsed); near-duplicates
and contamination use character 5-gram shingles of that text.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from typing import Any, Iterable, Sequence

from pydantic import BaseModel, ValidationError

from schemabuild.contract import canonical_json, grammar_schema
from schemabuild.task import Task, TaskError

STAGES = ("teacher", "parse", "pydantic", "jsonschema", "validator", "dedup", "near_dup", "decontam", "judge")
"""Check stages in the order they run (`teacher` = the teacher gave no answer)."""
SHINGLE = 5
"""Character n-gram size for near-duplicate and contamination checks."""


@dataclasses.dataclass
class Candidate:
    """An (input, raw teacher answer) pair waiting to be checked."""

    input: str
    raw: str | None
    source: str = "teacher"
    """Where it came from: `example` (the task file), `log` (--from-log) or `teacher`."""
    error: str | None = None
    """The teacher's error when it gave no answer."""


@dataclasses.dataclass
class Row:
    """A pair that passed every check."""

    input: str
    output: BaseModel
    source: str = "teacher"


@dataclasses.dataclass
class Reject:
    """A pair that failed a check: which stage, and why."""

    input: str
    raw: str | None
    stage: str
    reason: str
    source: str = "teacher"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class CheckFailed(Exception):
    def __init__(self, stage: str, reason: str):
        super().__init__(reason)
        self.stage, self.reason = stage, reason


# ---- text helpers ----------------------------------------------------------------------------------

_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed: the text two inputs are compared by."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return _SPACE.sub(" ", text).strip()


def shingles(text: str, n: int = SHINGLE) -> frozenset[str]:
    """Character n-grams of the normalized text (the whole text when it is shorter than n)."""
    t = normalize(text)
    if len(t) <= n:
        return frozenset([t]) if t else frozenset()
    return frozenset(t[i:i + n] for i in range(len(t) - n + 1))


def word_ngrams(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def overlap_report(train_inputs: list[str], gold_inputs: list[str], n: int = 3) -> dict:
    """How much a gold set's phrasing the training inputs share: the proof that decontamination is real.

    - `exact`: gold inputs whose normalized text is also a training input;
    - `ngram_share`: the share of the gold set's word n-grams that occur in some training input;
    - `nearest_mean` / `nearest_max`: per gold input, the character-shingle Jaccard of its nearest training input.
    """
    train_norm = {normalize(t) for t in train_inputs}
    train_grams = set().union(*(word_ngrams(t, n) for t in train_inputs)) if train_inputs else set()
    gold_grams = set().union(*(word_ngrams(g, n) for g in gold_inputs)) if gold_inputs else set()
    train_sh = [shingles(t) for t in train_inputs]
    nearest = [max((jaccard(gold, t) for t in train_sh), default=0.0) for gold in map(shingles, gold_inputs)]
    return {"gold_rows": len(gold_inputs), "exact": sum(normalize(g) in train_norm for g in gold_inputs),
            f"word_{n}gram_share": round(len(gold_grams & train_grams) / max(1, len(gold_grams)), 4),
            "nearest_mean": round(sum(nearest) / max(1, len(nearest)), 4), "nearest_max": round(max(nearest, default=0.0), 4)}


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


class NearDupIndex:
    """Sets added so far, answering "which one has Jaccard >= threshold with this set?" without comparing all.

    Exact: prefix filtering over one fixed token order (two sets that reach the threshold share a token in
    their prefixes), then a length filter, then the Jaccard itself. Rare-first orders make it fastest.
    """

    def __init__(self, threshold: float, order=None):
        self.threshold = threshold
        self.order = order or (lambda tok: (zlib.crc32(tok.encode()), tok))
        self.sets: list[frozenset] = []
        self.index: dict[str, list[int]] = defaultdict(list)

    def _prefix(self, s: frozenset) -> list[str]:
        size = len(s)
        return sorted(s, key=self.order)[:size - math.ceil(self.threshold * size - 1e-9) + 1]

    def find(self, s: frozenset) -> int | None:
        """The first added set near `s`, or None."""
        size = len(s)
        candidates: set[int] = set()
        for tok in self._prefix(s):
            candidates.update(self.index.get(tok, ()))
        for j in sorted(candidates):
            other = self.sets[j]
            if min(size, len(other)) < self.threshold * max(size, len(other)) - 1e-9:
                continue
            if jaccard(s, other) >= self.threshold - 1e-12:
                return j
        return None

    def add(self, s: frozenset) -> int:
        self.sets.append(s)
        for tok in self._prefix(s):
            self.index[tok].append(len(self.sets) - 1)
        return len(self.sets) - 1


def near_duplicates(sets: Sequence[frozenset], threshold: float) -> dict[int, int]:
    """Greedy near-duplicate removal: {i: j} for each set i with Jaccard >= threshold to an earlier kept set j."""
    df = Counter(tok for s in sets for tok in s)
    index = NearDupIndex(threshold, order=lambda tok: (df[tok], tok))
    kept: list[int] = []
    dups: dict[int, int] = {}
    for i, s in enumerate(sets):
        if not s:
            continue
        j = index.find(s)
        if j is None:
            index.add(s)
            kept.append(i)
        else:
            dups[i] = kept[j]
    return dups


class GoldIndex:
    """Gold (eval) inputs, for decontamination: exact normalized match or shingle overlap >= threshold.

    Overlap is |A∩B| / min(|A|, |B|): a training input that contains a gold input (or is contained in
    one) counts as contaminated even when fillers around it keep the Jaccard low.
    """

    def __init__(self, gold_inputs: Iterable[str], threshold: float):
        self.threshold = threshold
        self.texts = list(gold_inputs)
        self.exact = {normalize(t): t for t in self.texts}
        self.sets = [shingles(t) for t in self.texts]
        self.index: dict[str, list[int]] = defaultdict(list)
        for gi, s in enumerate(self.sets):
            for tok in s:
                self.index[tok].append(gi)

    def match(self, text: str) -> tuple[str, str] | None:
        """(gold input, why) when `text` overlaps a gold input, else None."""
        norm = normalize(text)
        if norm in self.exact:
            return self.exact[norm], "same normalized text"
        s = shingles(text)
        if not s:
            return None
        shared = Counter(gi for tok in s for gi in self.index.get(tok, ()))
        best = None
        for gi, count in sorted(shared.items()):
            overlap = count / min(len(s), len(self.sets[gi]))
            if overlap >= self.threshold - 1e-12 and (best is None or overlap > best[1]):
                best = (gi, overlap)
        if best is None:
            return None
        return self.texts[best[0]], f"shingle overlap >= {self.threshold:g}"


# ---- per-row checks --------------------------------------------------------------------------------

def parse(raw: str | None, error: str | None = None) -> Any:
    """The teacher's answer as JSON (a ```json fence around it is tolerated)."""
    if raw is None:
        raise CheckFailed("teacher", error or "no answer")
    text = raw.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
    if fence:
        text = fence.group(1)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckFailed("parse", f"not JSON: {exc.msg} at char {exc.pos}") from None


def validate_pydantic(task: Task, data: Any) -> BaseModel:
    try:
        return task.output.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise CheckFailed("pydantic", f"field {loc!r}: {err['msg']}{more}") from None


def validate_jsonschema(schema: dict, output: BaseModel, validator=None) -> None:
    """The canonical JSON of the output must satisfy the grammar's schema (what the decoder can produce)."""
    import jsonschema

    validator = validator or jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(json.loads(canonical_json(output))))
    if error is not None:
        loc = ".".join(str(p) for p in error.absolute_path) or "(root)"
        raise CheckFailed("jsonschema", f"field {loc!r}: {error.message}")


def run_validators(task: Task, text: str, output: BaseModel) -> None:
    for fn in task.validators:
        name = getattr(fn, "__name__", repr(fn))
        try:
            fn(text, output)
        except ValueError as exc:
            raise CheckFailed("validator", f"{name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a bug in the user's validator is their file's mistake
            where = f" in {task.source}" if task.source else ""
            raise TaskError(f"validator {name}{where} raised {type(exc).__name__}: {exc}".splitlines()[0]) from None


# ---- the chain -------------------------------------------------------------------------------------

def check_rows(task: Task, candidates: Sequence[Candidate], *, dedup_threshold: float = 0.9,
               gold_inputs: Iterable[str] | None = None, decontam_threshold: float | None = None
               ) -> tuple[list[Row], list[Reject]]:
    """Run every check in order; earlier candidates win duplicates. Returns (kept rows, rejects)."""
    schema = grammar_schema(task.output)
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    valid: list[Row] = []
    rejects: list[Reject] = []
    for c in candidates:
        try:
            output = validate_pydantic(task, parse(c.raw, c.error))
            validate_jsonschema(schema, output, validator)
            run_validators(task, c.input, output)
        except CheckFailed as exc:
            rejects.append(Reject(c.input, c.raw, exc.stage, exc.reason, c.source))
            continue
        valid.append(Row(c.input, output, c.source))
    raw_of: dict[str, str | None] = {}
    for c in candidates:
        raw_of.setdefault(c.input, c.raw)

    # exact duplicates of the normalized input
    seen: dict[str, str] = {}
    unique: list[Row] = []
    for row in valid:
        key = normalize(row.input)
        if key in seen:
            rejects.append(Reject(row.input, raw_of.get(row.input), "dedup", f"same normalized input as {seen[key]!r}", row.source))
            continue
        seen[key] = row.input
        unique.append(row)

    # near duplicates
    dups = near_duplicates([shingles(r.input) for r in unique], dedup_threshold)
    kept: list[Row] = []
    for i, row in enumerate(unique):
        if i in dups:
            rejects.append(Reject(row.input, raw_of.get(row.input), "near_dup",
                                  f"Jaccard >= {dedup_threshold} with {unique[dups[i]].input!r}", row.source))
        else:
            kept.append(row)

    # decontamination against the gold set
    if gold_inputs is not None:
        gold = GoldIndex(gold_inputs, dedup_threshold if decontam_threshold is None else decontam_threshold)
        clean = []
        for row in kept:
            hit = gold.match(row.input)
            if hit:
                rejects.append(Reject(row.input, raw_of.get(row.input), "decontam", f"{hit[1]} as gold input {hit[0]!r}" if hit[1].startswith("same") else f"{hit[1]} with gold input {hit[0]!r}", row.source))
            else:
                clean.append(row)
        kept = clean
    return kept, rejects


def apply_judge(rows: Sequence[Row], scores: Sequence[float | None], judge_min: float) -> tuple[list[Row], list[Reject]]:
    """Drop rows the judge scored below `judge_min` (1-5); a None score (no verdict) keeps the row."""
    kept, rejects = [], []
    for row, score in zip(rows, scores, strict=True):
        if score is not None and score < judge_min:
            rejects.append(Reject(row.input, canonical_json(row.output), "judge", f"score {score:g} < {judge_min:g}", row.source))
        else:
            kept.append(row)
    return kept, rejects


def count_reasons(rejects: Iterable[Reject]) -> tuple[dict[str, int], dict[str, int]]:
    """(rejections per stage in chain order, rejections per 'stage: reason' with quoted parts dropped)."""
    by_stage = Counter(r.stage for r in rejects)
    by_reason: Counter = Counter()
    for r in rejects:
        # the duplicate stages name the other input; count them by the rule alone
        reason = re.split(r" (?:as|with) (?=['\"]|gold input)", r.reason)[0]
        by_reason[f"{r.stage}: {reason}"[:120]] += 1
    ordered = {s: by_stage[s] for s in STAGES if by_stage.get(s)}
    return ordered, dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])))
