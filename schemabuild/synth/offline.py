"""The offline teacher: new (input, output) pairs built from the task's own examples and its schema, no LLM.

How pairs are built, for any task:
- A *slot* is a free-text string or plain integer of an example's output whose value occurs verbatim
  (case-insensitive, at word boundaries) in the example's input. The input with its slots cut out is a
  *carrier*. Values with no span are counted per field and announced (the user's cue to add an example).
- Examples whose outputs agree on everything except their slots form a *group* (for tool_picker: the same
  `tool`). Each carrier is filled with its group's slot values, with same-named hints (`hints["cities"]` for
  `city`), and with new values of each slot's form (`shapes`): numbers of the examples' step and range, ids
  with the same letters, names, made-up words (they teach copying whatever sits in a slot), everyday phrases.
  Slots inside lists also take other examples' values of the same field.
- Derived carriers (`derive`, `clauses`): lists of every length up to three longer than the examples', from all
  examples' item forms; an optional value dropped with the word that introduced it (the field null), or added
  with the word that introduced it in another example where the field is null (the field set); a clause moved to
  the front or the end, so values sit in other places (list items that change places reorder the list); spliced
  carriers (one example's text before its slots, another's after, same group). A group with no slots, whose
  label is its content (tool_picker's no_tool), gets messages of two of its examples joined, or crossed at a
  word both use, where its output holds only label values and nulls.
- Most rows get surface variants: casing, fillers, politeness, a request put as a question, context before it,
  punctuation, a letter typo in a carrier word, all capitals or lowercase (the label follows); in a few rows an
  integer slot is written in English words ("forty-five minutes", the label the integer: an integer slot is
  one the examples write in digits). A wrapper
  holding a word the examples use with one label value only is never added, and such words are never misspelt.
- The task's validators run on every pair; the announcement and the manifest say what the rows cover, with
  the rows of each kind (`kinds`: example, spliced, list, null, added, reordered, joined, crossed; "in words").
"""

from __future__ import annotations

import copy
import sys
import json
import math
import random
import re
from collections import Counter, defaultdict
from typing import Any

from schemabuild.contract import canonical_json
from schemabuild.synth.checks import NearDupIndex, normalize, shingles
from schemabuild.synth.clauses import added_carriers, in_words, reordered_carriers
from schemabuild.synth.coverage import announce, coverage
from schemabuild.synth.derive import Carrier, content_carriers, derive_carriers, get_path, label_leaves, set_path, words
from schemabuild.synth.protocol import Labelled
from schemabuild.synth.shapes import field_key, is_free_text, is_integer, leaves, new_value

FILLERS_BEFORE = ["hey ", "ok ", "hi ", "um ", "so ", "hmm ", "oh ", "alright ", "hello ", "right, "]
FILLERS_AFTER = [" please", " thanks", " thx", " :)", " 🙏", " 😊", " 👀", " ty", " thank you!", " xD",
                 " <3", " ✨", " 🙂"]
# Wrappers from general knowledge of how people write requests: politeness, a question, context before the
# request. None says anything about urgency, mood or size, so none can change a label; a wrapper holding a word
# that only some labels' examples use is dropped per task as well (`_neutral`).
POLITE_BEFORE = ["please ", "could you ", "can you please ", "would you mind ", "if you can, ", "kindly ",
                 "i'd love it if you could ", "do me a favour and ", "would you be able to ", "is it possible to ",
                 "i was wondering if you could ", "any way you could "]
POLITE_AFTER = [" if you can", " for me", " for us", " if that's ok", ", much appreciated", ", thank you",
                " if possible", ", would that work?", ", is that doable?"]
LEAD_INS = ["sorry to bother you but ", "before i forget, ", "one more thing: ", "honestly, ", "btw ",
            "ok so ", "hi again, ", "question for you: ", "small request: ", "got a second? "]
PREFACES = ["Hope you're well.", "Hi, it's me again.", "Thanks for the help last time.",
            "Hello from the other side of the office.", "Here goes.", "Another one for you.", "Good to see you online."]
ENDINGS = ["?", "!", "!!", ".", "..."]
MAX_VARIANTS = 48
"""Most surface variants tried per filled carrier."""
INVENTED_FILLS = 5
"""Slot fills of invented words per carrier (see the module docstring)."""
WORD_FILLS = 7
"""Slot fills of everyday words or names per carrier, and as many from other examples' values of the field."""
LIST_SHAPES = 3
"""New carriers per (example with a list, list length): item forms drawn from all examples' items."""
LIST_LONGER = 3
"""Lists run up to this many items longer than the longest example list."""
AS_WRITTEN = 0.35
"""Share of first-pass rows that keep the carrier's own wording (the rest get a surface variant)."""
ADDED, REORDERED = 0.35, 0.35
"""Share of (carrier, optional field, connector) given an added value, and of carriers given a clause moved."""
NUMBER_WORDS = 0.15
"""Chance that a row writes one of its integer slots (1-99) in words, where the carrier has one."""
SHOUT, SLOT_TYPO, LOWER = 0.05, 0.05, 0.05
"""Chance that a variant is all capitals or all lowercase (slots and label too), or has a typo inside a slot."""


def _find(value: str, text: str) -> tuple[int, int] | None:
    """The first case-insensitive, word-bounded occurrence of value in text."""
    left = r"\b" if re.match(r"\w", value[0]) else ""
    right = r"\b" if re.match(r"\w", value[-1]) else ""
    m = re.search(left + re.escape(value) + right, text, re.I)
    return (m.start(), m.end()) if m else None


class OfflineTeacher:
    """A Teacher with no LLM: recombines the task's examples (see the module docstring)."""

    name = "offline"
    model = "recombine-examples"

    def __init__(self, task, cfg=None):
        self.task = task
        self.cfg = cfg
        self.schema = task.output.model_json_schema()
        self.outputs = [ex.output.model_dump(mode="json") for ex in task.examples]
        self.no_span: dict[str, int] = defaultdict(int)
        """Field -> examples whose value of it has no span in the input (the user's cue to add an example)."""
        self.carriers = [self._carrier(i) for i in range(len(task.examples))]
        self.groups: dict[str, list[int]] = defaultdict(list)
        for c in self.carriers:
            self.groups[c.group].append(c.example)
        self.seen: dict[tuple, list] = defaultdict(list)
        """Field (path without list indices) -> the examples' slot values of it."""
        for c in self.carriers:
            for path in c.slots:
                self.seen[field_key(path)].append(get_path(self.outputs[c.example], path))
        self.openers = self._openers()
        self.cues = self._cue_words()
        fillers = self.task.hints.get("fillers", [])
        self.wrappers = {name: self._neutral(phrases) for name, phrases in {
            "polite_before": POLITE_BEFORE, "polite_after": POLITE_AFTER, "lead_in": LEAD_INS, "preface": PREFACES,
            "before": FILLERS_BEFORE + [f + " " for f in fillers], "after": FILLERS_AFTER + [" " + f for f in fillers],
        }.items()}
        self.spliced = {key: self._splices(members) + content_carriers(self, members) for key, members in self.groups.items()}
        derived = derive_carriers(self, shapes=LIST_SHAPES, longer=LIST_LONGER)
        derived += added_carriers(self, self.carriers + [c for c in derived if c.kind == "list"], ADDED, "added")
        derived += reordered_carriers(self.carriers + derived, self.outputs, REORDERED, "reordered")
        for c in derived:
            self.spliced[c.group].append(c)
        self.derived = Counter(c.kind for c in derived)
        self.invented: set[str] = set()
        """Slot values this teacher made up (the rest come from the examples and hints)."""
        self.reshaped: set[str] = set()
        """Slot values shouted, lowercased or given a typo by a variant (the label copies them)."""
        self.labels: dict[str, str] = {}
        self.row_kinds: dict[str, str] = {}
        """Input -> the kind of carrier it was built from (plus " in words" where an integer is written in words)."""
        self.kinds: Counter = Counter()
        """Rows of the last pool per carrier kind, and "in words": rows with an integer written in words."""
        self.shortfall: str | None = None
        self.covered: dict = {}

    # ---- setup ---------------------------------------------------------------------------------

    def _carrier(self, i: int) -> Carrier:
        text, out = self.task.examples[i].input, self.outputs[i]
        spans = []
        for path, value in leaves(out):
            if isinstance(value, str):
                if len(value.strip()) < 2 or not is_free_text(self.schema, path):
                    continue
                span = _find(value, text)
            elif is_integer(self.schema, path):
                span = _find(str(value), text)
            else:
                continue
            if span:
                spans.append((span, path))
            else:
                self.no_span[".".join(field_key(path))] += 1
        # longest first, no overlaps
        chosen = []
        for span, path in sorted(spans, key=lambda sp: (-(sp[0][1] - sp[0][0]), sp[0][0])):
            if all(span[1] <= s[0] or span[0] >= s[1] for s, _ in chosen):
                chosen.append((span, path))
        chosen.sort()
        parts: list[Any] = []
        pos = 0
        for (start, end), path in chosen:
            parts.append(text[pos:start])
            parts.append(path)
            pos = end
        parts.append(text[pos:])
        slots = tuple(path for _, path in chosen)
        signature = copy.deepcopy(out)
        for path in slots:
            set_path(signature, path, "\x00slot")
        return Carrier(parts, i, json.dumps(signature, sort_keys=True), slots)

    def _splices(self, members: list[int]) -> list[Carrier]:
        """Carriers joining one example's text up to its first slot to another's after it (same group, same slots)."""
        out, seen = [], {tuple(map(str, self.carriers[i].parts)) for i in members}
        for i in members:
            for j in members:
                a, b = self.carriers[i], self.carriers[j]
                if i == j or not a.slots or a.slots != b.slots:
                    continue
                parts = a.parts[:a.parts.index(a.slots[0]) + 1] + b.parts[b.parts.index(b.slots[0]) + 1:]
                if tuple(map(str, parts)) not in seen:
                    seen.add(tuple(map(str, parts)))
                    out.append(Carrier(parts, i, a.group, a.slots, kind="spliced"))
        return out

    def _openers(self) -> dict[str, set[str]]:
        """Leading words (1-2) that start examples of at least three groups, so they carry no label.

        Maps each to the words seen right after it: it is only put in front of a carrier starting with one
        of those ("billy" before "play ...", never "can you" before "what's ...").
        """
        groups: dict[str, set] = defaultdict(set)
        after: dict[str, set] = defaultdict(set)
        for c in self.carriers:
            words = self.task.examples[c.example].input.lower().split()
            for k in (1, 2):
                if len(words) > k:
                    opener = " ".join(words[:k]).rstrip(",")
                    groups[opener].add(c.group)
                    after[opener].add(words[k])
        return {o: after[o] for o in sorted(groups) if len(groups[o]) >= 3 and re.fullmatch(r"[\w' ]+", o)}

    def _cue_words(self) -> set[str]:
        """Words the examples use with one value only of a label field (enum or bool): possible cues.

        A wrapper holding one is never added, so no added word can change a label.
        """
        fields: dict[tuple, list] = defaultdict(list)
        for i, out in enumerate(self.outputs):
            for path, value in label_leaves(self.schema, out):
                fields[field_key(path)].append((i, json.dumps(value)))
        cues = set()
        for pairs in fields.values():
            values = {v for _, v in pairs}
            if len(values) < 2:
                continue
            by_word: dict[str, set] = defaultdict(set)
            for i, v in pairs:
                for w in words(self.task.examples[i].input):
                    by_word[w].add(v)
            cues |= {w for w, vs in by_word.items() if len(vs) == 1 and len(w) >= 3}
        return cues

    def _neutral(self, phrases: list[str]) -> list[str]:
        return [p for p in phrases if not (words(p) & self.cues)]

    def _donors(self, carrier: Carrier) -> list[tuple]:
        """Slot value tuples: from every example of its group, same-named hints, then new values of each slot's shape."""
        donors = []
        if carrier.kind in ("example", "spliced", "joined", "crossed"):
            for j in self.groups[carrier.group]:
                values = tuple(get_path(self.outputs[j], p) for p in carrier.slots)
                if values not in donors:
                    donors.append(values)
        own = tuple(get_path(carrier.base or self.outputs[carrier.example], p) for p in carrier.slots)
        for k, path in enumerate(carrier.slots):
            field = path[-1] if isinstance(path[-1], str) else ""
            plurals = (field, field + "s", field + "es", field[:-1] + "ies" if field.endswith("y") else field)
            for key in dict.fromkeys(plurals):
                for v in self.task.hints.get(key, []) if field else []:
                    values = own[:k] + (v,) + own[k + 1:]
                    if values not in donors and v.strip():
                        donors.append(values)
        if not carrier.slots:
            return donors
        base = carrier.base or self.outputs[carrier.example]
        rng = random.Random("invent:" + repr(carrier.parts))
        for style, count in (("examples", WORD_FILLS), ("everyday", WORD_FILLS), ("madeup", INVENTED_FILLS)):
            for _ in range(count):
                values = []
                for p in carrier.slots:
                    original = get_path(base, p)
                    # other examples' values only inside lists and for numbers: elsewhere the group's own
                    mix = style == "examples" and not (isinstance(original, int) or any(isinstance(k, int) for k in p))
                    values.append(new_value(original, "everyday" if mix else style, self.seen[field_key(p)], rng))
                keys = [(field_key(p), str(v).casefold()) for p, v in zip(carrier.slots, values)]
                if len(set(keys)) < len(keys):
                    continue  # the same name twice in one list reads oddly
                self.invented.update(v for v, p in zip(values, carrier.slots) if isinstance(v, str)
                                     and (style != "examples" or not any(isinstance(k, int) for k in p)))
                donors.append(tuple(values))
        return donors

    # ---- variation -----------------------------------------------------------------------------

    def _vary(self, parts: list[Any], rng: random.Random) -> list[Any]:
        """A surface variant: only literal parts change, slot values stay verbatim."""
        parts = list(parts)
        lit = [i for i, p in enumerate(parts) if isinstance(p, str)]
        first, last = lit[0], lit[-1]  # parts always begin and end with a literal (maybe empty)
        ops = rng.sample(["case", "before", "after", "ending", "typo", "opener", "polite", "lead_in", "preface"],
                         k=rng.randint(1, 4))
        w = self.wrappers
        order = ["opener", "typo", "case", "polite", "lead_in", "before", "preface", "after", "ending"]
        for op in sorted(ops, key=order.index):
            if op == "opener" and self.openers:
                parts[first] = self._swap_opener(parts[first], rng)
            elif op == "typo":
                found = [(i, m) for i in lit for m in re.finditer(r"[A-Za-z]{5,}", parts[i])
                         if m.group().lower() not in self.cues]  # a label's cue stays spelt as the example has it
                if found:
                    i, m = rng.choice(found)
                    parts[i] = parts[i][:m.start()] + _typo(m.group(), rng) + parts[i][m.end():]
            elif op == "case" and parts[first]:
                head = parts[first]
                parts[first] = head[0].upper() + head[1:] if head[0].islower() else head[0].lower() + head[1:]
                if rng.random() < 0.3:
                    for i in lit:
                        parts[i] = parts[i].lower()
            elif op == "polite" and w["polite_before"] and w["polite_after"]:
                if rng.random() < 0.5:
                    parts[first] = rng.choice(w["polite_before"]) + parts[first]
                else:
                    parts[last] = parts[last].rstrip(" .!?") + rng.choice(w["polite_after"])
            elif op in ("lead_in", "before", "after", "preface") and w[op]:
                if op == "after":
                    parts[last] = parts[last].rstrip(" .!?") + rng.choice(w[op])
                else:
                    parts[first] = rng.choice(w[op]) + (" " if op == "preface" else "") + parts[first]
            elif op == "ending":
                tail = parts[last].rstrip(" .!?")
                parts[last] = tail + rng.choice(ENDINGS) if tail or last != first else parts[last]
        return parts

    def _swap_opener(self, head: str, rng: random.Random) -> str:
        """Swap or drop a leading word that starts examples of three or more groups."""
        low = head.lower()
        match = max((o for o in self.openers if low.startswith(o + " ") or low.startswith(o + ", ")),
                    key=len, default=None)
        rest = head[len(match):].lstrip(", ") if match else head
        word = rest.split(" ", 1)[0].lower() if rest else ""
        fits = [o for o in self.openers if o != match and word in self.openers[o]]
        choice = rng.choice(fits + [""] if match else fits) if (fits or match) else None
        return head if choice is None else (choice + " " if choice else "") + rest

    def _reshape(self, c: Carrier, parts: list, values: tuple, label: str, rng: random.Random):
        """All capitals, all lowercase, or a typo inside one slot value; the label follows (it copies the slots)."""
        roll = rng.random() * (SHOUT + LOWER + SLOT_TYPO)
        texts = [k for k, v in enumerate(values) if isinstance(v, str)]
        if not texts:
            return parts, values, label
        if roll < SHOUT + LOWER:
            change = str.upper if roll < SHOUT else str.lower
            new_parts = [change(p) if isinstance(p, str) else p for p in parts]
            new_values = tuple(change(v) if isinstance(v, str) else v for v in values)
        else:
            new_parts, k = parts, rng.choice(texts)
            found = list(re.finditer(r"[A-Za-z]{5,}", values[k]))
            if not found:
                return parts, values, label
            m = rng.choice(found)
            new_values = values[:k] + (values[k][:m.start()] + _typo(m.group(), rng) + values[k][m.end():],) + values[k + 1:]
        new_label = self._fill(c, new_values)
        if new_label is None:
            return parts, values, label
        self.reshaped.update(v for v in new_values if isinstance(v, str))
        return new_parts, new_values, new_label

    @staticmethod
    def _join(parts: list[Any], values: tuple, slots: tuple) -> str:
        by_path = dict(zip(slots, values))
        text = "".join(p if isinstance(p, str) else str(by_path[p]) for p in parts)
        return re.sub(r"\s+", " ", text).strip()

    def _fill(self, carrier: Carrier, values: tuple) -> str | None:
        """The carrier's output with these slot values (None when it does not validate)."""
        out = copy.deepcopy(carrier.base if carrier.base is not None else self.outputs[carrier.example])
        for path, v in zip(carrier.slots, values):
            set_path(out, path, v)
        try:
            return canonical_json(self.task.output.model_validate(out))
        except Exception:  # noqa: BLE001 - a hint value the schema refuses is simply not used
            return None

    def _passes(self, text: str, label: str) -> bool:
        """The task's own validators accept the pair (a dropped optional may be required by one)."""
        try:
            out = self.task.output.model_validate_json(label)
            for check in self.task.validators:
                check(text, out)
        except Exception:  # noqa: BLE001 - a validator's refusal (ValueError or other) drops the pair
            return False
        return True

    # ---- the Teacher protocol --------------------------------------------------------------------

    def pool(self, n: int, seed: int) -> list[tuple[str, str]]:
        """Up to n distinct (input, canonical output) pairs, classes interleaved, deterministic for a seed."""
        rng = random.Random(f"offline:{seed}")
        taken = {normalize(ex.input) for ex in self.task.examples}
        threshold = getattr(self.cfg, "dedup_threshold", 0.9)
        # each group may make twice its share, so the others fill in for a group that runs dry
        quota = 2 * math.ceil(n / max(1, len(self.groups)))
        per_group: list[list[tuple[str, str, str]]] = []
        for key in sorted(self.groups):
            bases = []
            for c in [self.carriers[i] for i in self.groups[key]] + self.spliced[key]:
                for values in self._donors(c):
                    label = self._fill(c, values)
                    if label is not None:
                        bases.append((c, values, label))
            rng.shuffle(bases)
            pairs: list[tuple[str, str, str]] = []
            near = NearDupIndex(threshold)
            for i in self.groups[key]:
                near.add(shingles(self.task.examples[i].input))
            rounds = max(1, min(MAX_VARIANTS, math.ceil(quota / max(1, len(bases))) * 2))
            for r in range(rounds + 1):
                for c, values, label in bases:
                    if len(pairs) >= quota:
                        break
                    # most rows get a surface variant, also in the first pass over the bases: with many
                    # carriers (lists, numbers) the quota fills before a second pass
                    varied = r > 0 or rng.random() > AS_WRITTEN
                    parts = self._vary(c.parts, rng) if varied else c.parts
                    if varied and c.slots and rng.random() < SLOT_TYPO + SHOUT + LOWER:
                        parts, values, label = self._reshape(c, parts, values, label, rng)
                    spelt = in_words(parts, values, c.slots, rng) if rng.random() < NUMBER_WORDS else None
                    parts = spelt or parts
                    text = self._join(parts, values, c.slots)
                    key_text = normalize(text)
                    if not key_text or key_text in taken or not self._passes(text, label):
                        continue
                    taken.add(key_text)
                    sh = shingles(text)
                    if not sh or near.find(sh) is not None:
                        continue  # the near-duplicate check would drop it: try another variant instead
                    near.add(sh)
                    pairs.append((text, label, c.kind + (" in words" if spelt else "")))
            per_group.append(pairs)
        order = []
        for k in range(max((len(p) for p in per_group), default=0)):
            for pairs in per_group:
                if k < len(pairs):
                    order.append(pairs[k])
        self.row_kinds = {text: kind for text, _, kind in order[:n]}
        self.kinds = Counter(kind.split()[0] for kind in self.row_kinds.values())
        self.kinds["in words"] = sum(kind.endswith(" in words") for kind in self.row_kinds.values())
        return [(text, label) for text, label, _ in order[:n]]

    async def generate_inputs(self, task, n: int, seed: int) -> list[str]:
        pairs = self.pool(n, seed)
        for text, label in pairs:
            self.labels.setdefault(text, label)
        if len(pairs) < n:
            self.shortfall = f"asked for {n} inputs, the examples allow {len(pairs)}"
        self.covered = coverage(self.schema, [json.loads(label) for _, label in pairs], self.no_span,
                                len(self.task.examples))
        self.covered["kinds"] = {k: v for k, v in self.kinds.most_common() if v and k != "in words"}
        self.covered["in_words"] = self.kinds["in words"]
        print(f"offline teacher: {announce(self.covered)}", file=sys.stderr)
        return [text for text, _ in pairs]

    async def label(self, task, inputs: list[str]) -> list:
        return [Labelled(x, self.labels[x]) if x in self.labels else
                Labelled(x, None, "the offline teacher labels only inputs it built; set OPENAI_API_KEY or OPENAI_BASE_URL")
                for x in inputs]

    async def judge(self, task, pairs: list[tuple[str, str]]) -> list[float | None]:
        return [None] * len(pairs)

    def ledger(self) -> dict:
        return {"calls": 0, "cached_calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
                "budget_usd": getattr(self.cfg, "budget_usd", None), "budget_hit": False}

    def coverage(self) -> dict:
        """Rows made, list lengths and enum values covered, fields with no span (see `coverage`)."""
        return self.covered

    def note(self) -> str:
        """What the manifest says about how the pairs were made."""
        n_slots = sum(1 for c in self.carriers if c.slots)
        text = (f"offline teacher, no LLM: pairs built from the task's {len(self.task.examples)} examples "
                f"({n_slots} with values found in their input; {self.derived.get('list', 0)} carriers with lists "
                f"of other lengths, {self.derived.get('null', 0)} with an optional value dropped, "
                f"{self.derived.get('added', 0)} with one added (taken with its word from another example), "
                f"{self.derived.get('reordered', 0)} with a clause moved to the front or end (lists follow the text), "
                f"{sum(c.kind in ('joined', 'crossed') for v in self.spliced.values() for c in v)} joining or "
                "crossing two slot-free examples of one label; "
                f"{len(self.groups)} groups), slots filled with other examples' values or new ones of the "
                "same form (numbers, ids, names, made-up or everyday words), and surface variants (casing, "
                "politeness, a request put as a question, context before the request, typos, an integer in words). "
                "Labels are as right as the examples. "
                "Set OPENAI_API_KEY or OPENAI_BASE_URL for an LLM teacher.")
        if self.covered:
            text += f" Covered: {announce(self.covered)}."
        if self.shortfall:
            text += f" Short of the target: {self.shortfall}."
        return text


def _typo(word: str, rng: random.Random) -> str:
    """A dropped or doubled letter, or two letters swapped, inside a word of 5+ letters."""
    k = rng.randrange(1, len(word) - 1)
    roll = rng.random()
    if roll < 0.4:
        return word[:k] + word[k + 1:]
    if roll < 0.6:
        return word[:k] + word[k] + word[k:]
    return word[:k] + word[k + 1] + word[k] + word[k + 2:]
