"""The offline teacher: new (input, output) pairs recombined from the task's own examples, with no LLM.

How pairs are built, for any task:
- A *slot* is a free-text string field of an example's output (no enum, const, pattern or format) whose value
  occurs verbatim (case-insensitive, at word boundaries) in the example's input. The input with its slots
  cut out is a *carrier* template.
- Examples whose outputs agree on everything except their slots form a *group* (for tool_picker: the same
  `tool`). Each carrier is filled with the slot values of every example in its group, so the output is
  that donor's output and the label stays consistent. A hints list named after the slot's field
  (`hints["city"]` or `hints["cities"]` for a field `city`) adds values too; other hints are never put in slots.
- Slots are also filled with invented words (random syllables, e.g. "zorvap kinto"): a small model trained on
  real values only memorises them and reads the label off the slot text; with invented values it has to copy
  whatever sits in the slot and take the other fields from the carrier. These pairs read as nonsense on purpose.
- Spliced carriers: the text before the slots from one example and after them from another of the same group
  with the same slots ("set a timer for <query> for the tea"), so the carrier words come in more combinations.
- Every filled carrier gets surface variants: casing, fillers before/after (a small generic list plus
  `hints["fillers"]`), punctuation, a dropped or swapped letter in a carrier word, and swapping or dropping a
  leading word that starts examples of three or more groups (so it says nothing about the label).
  Slot text is never altered, so the output still copies the input verbatim.
- Examples with no slot get surface variants only.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import re
from collections import defaultdict
from typing import Any

from schemabuild.contract import canonical_json
from schemabuild.synth.checks import NearDupIndex, normalize, shingles
from schemabuild.synth.protocol import Labelled

FILLERS_BEFORE = ["hey ", "yo ", "ok ", "pls ", "hi ", "um ", "so ", "hmm ", "oh ", "alright "]
FILLERS_AFTER = [" pls", " please", " thanks", " thx", " lol", " :)", " 🙏", " 😊", " asap", " rn", " 🔥", " 😂", " 👀",
                 " ty", " thank you!", " haha", " xD", " <3", " ✨", " 💯"]
# Requests wrapped in politeness or a lead-in clause: longer messages whose extra words say nothing about the label.
POLITE_BEFORE = ["please ", "could you ", "can you please ", "would you mind ", "if you can, ", "kindly ",
                 "when you get a sec, ", "quick favour: ", "i'd love it if you could ", "do me a favour and "]
POLITE_AFTER = [" if you can", " when you have a moment", ", thank you so much", " for me", " for us",
                " if that's ok", ", much appreciated", " whenever you're free"]
LEAD_INS = ["ok so quick question, ", "sorry to bother you but ", "random thought, ", "before i forget, ",
            "one more thing: ", "alright everyone, ", "no rush but ", "honestly, ", "btw ", "real quick, "]
ENDINGS = ["?", "!", "!!", ".", "..."]
MAX_VARIANTS = 48
"""Most surface variants tried per filled carrier."""
INVENTED_FILLS = 8
"""Slot fills of invented words per carrier (see the module docstring)."""
WORD_FILLS = 6
"""Slot fills of everyday words per carrier (phrases from the generic vocabulary below)."""
SHOUT, SLOT_TYPO = 0.06, 0.05
"""Chance that a variant is all capitals (slot and label too), or has a typo inside a slot (copied to the label)."""
# A generic vocabulary for slot fills: real words in new combinations, so the model copies any words, not only the
# examples' values or invented ones. Nothing here is about any one task.
ADJECTIVES = ("tiny old red sleepy angry happy giant rainy frozen golden ancient electric wild quiet shiny broken "
              "fluffy spicy haunted floating purple retro cozy noisy secret lazy brave weird vintage neon").split()
NOUNS = ("otter castle robot pancake volcano lighthouse bicycle dragon library teapot submarine cactus penguin "
         "skyscraper violin meteor garden hamster train bridge forest lantern pirate wizard taco comet island "
         "tractor owl glacier keyboard marathon circus canyon waterfall spaceship sandwich orchestra festival").split()
VERBS_ING = "dancing sleeping racing singing falling cooking flying melting jumping spinning hiding glowing".split()
VERBS = "build fix paint clean grow draw fold cook repair tune".split()
NAMES = ("Mira Solano Kenji Okafor Lucia Brandt Arjun Novak Elena Duarte Tomas Lindqvist Amara Haddad Felix Moreau "
         "Ingrid Castillo Ravi Petrova").split()


def everyday_phrase(rng: random.Random) -> str:
    """A short phrase of real words (e.g. "a sleepy otter", "owls dancing", "how to fix a teapot", "Mira Novak")."""
    adj, noun, other = rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(NOUNS)
    forms = [f"{adj} {noun}", f"a {adj} {noun}", f"the {noun} of the {other}", f"{noun}s {rng.choice(VERBS_ING)}",
             f"how to {rng.choice(VERBS)} a {noun}", f"{rng.choice(NAMES)} {rng.choice(NAMES)}",
             f"{adj} {noun} {other}s", f"{noun} {rng.randint(2, 99)}"]
    return rng.choice(forms)
CONSONANTS, VOWELS = "bcdfghjklmnprstvwz", "aeiou"


@dataclasses.dataclass
class Carrier:
    """An example's input cut around its slots: literal strings and slot paths, in order."""

    parts: list[Any]
    example: int
    group: str
    slots: tuple[tuple, ...]


def _strings(value: Any, path: tuple = ()):
    """(path, string) for every string leaf of a JSON value."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, path + (i,))


def _resolve(node: dict, defs: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        node = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
    return node


def _branches(node: dict, defs: dict) -> list[dict]:
    node = _resolve(node, defs)
    out = []
    for key in ("anyOf", "oneOf", "allOf"):
        for b in node.get(key, []):
            out.extend(_branches(b, defs))
    return out or [node]


def _is_free_text(schema: dict, path: tuple) -> bool:
    """Whether the schema node at `path` is a plain string (no enum/const/pattern/format)."""
    defs = schema.get("$defs", {})
    nodes = [schema]
    for key in path:
        nxt = []
        for n in nodes:
            for b in _branches(n, defs):
                if isinstance(key, str) and key in b.get("properties", {}):
                    nxt.append(b["properties"][key])
                elif isinstance(key, int) and isinstance(b.get("items"), dict):
                    nxt.append(b["items"])
        if not nxt:
            return False
        nodes = nxt
    leaves = [b for n in nodes for b in _branches(n, defs)]
    strings = [b for b in leaves if b.get("type") == "string"]
    return bool(strings) and all(not (set(b) & {"enum", "const", "pattern", "format"}) for b in strings) \
        and not any("enum" in b or "const" in b for b in leaves)


def _set_path(obj: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _get_path(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def invented_words(rng: random.Random, k: int) -> str:
    """k pronounceable made-up words (1-3 syllables, sometimes capitalised)."""
    words = []
    for _ in range(k):
        w = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) + (rng.choice(CONSONANTS) if rng.random() < 0.4 else "")
                    for _ in range(rng.randint(1, 3)))
        words.append(w.capitalize() if rng.random() < 0.2 else w)
    return " ".join(words)


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
        self.carriers = [self._carrier(i) for i in range(len(task.examples))]
        self.groups: dict[str, list[int]] = defaultdict(list)
        for c in self.carriers:
            self.groups[c.group].append(c.example)
        self.openers = self._openers()
        self.spliced = {key: self._splices(members) for key, members in self.groups.items()}
        self.invented: set[str] = set()
        """Slot values this teacher made up (the rest come from the examples and hints)."""
        self.reshaped: set[str] = set()
        """Slot values shouted or given a typo by a variant (the label copies them)."""
        self.labels: dict[str, str] = {}
        self.shortfall: str | None = None

    # ---- setup ---------------------------------------------------------------------------------

    def _carrier(self, i: int) -> Carrier:
        text, out = self.task.examples[i].input, self.outputs[i]
        spans = []
        for path, value in _strings(out):
            if len(value.strip()) < 2 or not _is_free_text(self.schema, path):
                continue
            span = _find(value, text)
            if span:
                spans.append((span, path))
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
            _set_path(signature, path, "\x00slot")
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
                    out.append(Carrier(parts, i, a.group, a.slots))
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

    def _donors(self, carrier: Carrier) -> list[tuple]:
        """Slot value tuples for a carrier: from every example of its group, then from same-named hints."""
        donors = []
        for j in self.groups[carrier.group]:
            values = tuple(_get_path(self.outputs[j], p) for p in carrier.slots)
            if values not in donors:
                donors.append(values)
        if len(carrier.slots) == 1 and isinstance(carrier.slots[0][-1], str):
            field = carrier.slots[0][-1]
            plurals = (field, field + "s", field + "es", field[:-1] + "ies" if field.endswith("y") else field)
            for key in dict.fromkeys(plurals):
                for v in self.task.hints.get(key, []):
                    if (v,) not in donors and v.strip():
                        donors.append((v,))
        if carrier.slots:
            rng = random.Random("invent:" + repr(carrier.parts))
            for _ in range(INVENTED_FILLS):
                values = tuple(invented_words(rng, rng.randint(1, 4)) for _ in carrier.slots)
                self.invented.update(values)
                donors.append(values)
            for _ in range(WORD_FILLS):
                values = tuple(everyday_phrase(rng) for _ in carrier.slots)
                self.invented.update(values)
                donors.append(values)
        return donors

    # ---- variation -----------------------------------------------------------------------------

    def _vary(self, parts: list[Any], rng: random.Random) -> list[Any]:
        """A surface variant: only literal parts change, slot values stay verbatim."""
        parts = list(parts)
        lit = [i for i, p in enumerate(parts) if isinstance(p, str)]
        first, last = lit[0], lit[-1]  # parts always begin and end with a literal (maybe empty)
        ops = rng.sample(["case", "before", "after", "ending", "typo", "opener", "polite", "lead_in"],
                         k=rng.randint(1, 4))
        fillers_before = FILLERS_BEFORE + [f + " " for f in self.task.hints.get("fillers", [])]
        fillers_after = FILLERS_AFTER + [" " + f for f in self.task.hints.get("fillers", [])]
        order = ["opener", "typo", "case", "polite", "lead_in", "before", "after", "ending"]
        for op in sorted(ops, key=order.index):
            if op == "opener" and self.openers:
                head = parts[first]
                low = head.lower()
                match = max((o for o in self.openers if low.startswith(o + " ") or low.startswith(o + ", ")),
                            key=len, default=None)
                rest = head[len(match):].lstrip(", ") if match else head
                word = rest.split(" ", 1)[0].lower() if rest else ""
                fits = [o for o in self.openers if o != match and word in self.openers[o]]
                choice = rng.choice(fits + [""] if match else fits) if (fits or match) else None
                if choice is not None:
                    parts[first] = (choice + " " if choice else "") + rest
            elif op == "typo":
                words = [(i, m) for i in lit for m in re.finditer(r"[A-Za-z]{5,}", parts[i])]
                if words:
                    i, m = rng.choice(words)
                    w = m.group()
                    k = rng.randrange(1, len(w) - 1)
                    typo = w[:k] + w[k + 1:] if rng.random() < 0.5 else w[:k] + w[k + 1] + w[k] + w[k + 2:]
                    parts[i] = parts[i][:m.start()] + typo + parts[i][m.end():]
            elif op == "case" and parts[first]:
                head = parts[first]
                parts[first] = head[0].upper() + head[1:] if head[0].islower() else head[0].lower() + head[1:]
                if rng.random() < 0.3:
                    for i in lit:
                        parts[i] = parts[i].lower()
            elif op == "polite":
                if rng.random() < 0.5:
                    parts[first] = rng.choice(POLITE_BEFORE) + parts[first]
                else:
                    parts[last] = parts[last].rstrip(" .!?") + rng.choice(POLITE_AFTER)
            elif op == "lead_in":
                parts[first] = rng.choice(LEAD_INS) + parts[first]
            elif op == "before":
                parts[first] = rng.choice(fillers_before) + parts[first]
            elif op == "after":
                parts[last] = parts[last].rstrip(" .!?") + rng.choice(fillers_after)
            elif op == "ending":
                tail = parts[last].rstrip(" .!?")
                parts[last] = tail + rng.choice(ENDINGS) if tail or last != first else parts[last]
        return parts

    def _reshape(self, c: Carrier, parts: list, values: tuple, label: str, rng: random.Random):
        """All capitals, or a typo inside one slot value; the label follows (it copies the slot verbatim)."""
        if rng.random() < SHOUT / (SHOUT + SLOT_TYPO):
            new_parts = [p.upper() if isinstance(p, str) else p for p in parts]
            new_values = tuple(v.upper() for v in values)
        else:
            new_parts, k = parts, rng.randrange(len(values))
            words = list(re.finditer(r"[A-Za-z]{5,}", values[k]))
            if not words:
                return parts, values, label
            m = rng.choice(words)
            w, j = m.group(), rng.randrange(1, len(m.group()) - 1)
            typo = w[:j] + w[j + 1:] if rng.random() < 0.5 else w[:j] + w[j] + w[j:]
            new_values = values[:k] + (values[k][:m.start()] + typo + values[k][m.end():],) + values[k + 1:]
        new_label = self._fill(c, new_values)
        if new_label is None:
            return parts, values, label
        self.reshaped.update(new_values)
        return new_parts, new_values, new_label

    @staticmethod
    def _join(parts: list[Any], values: tuple, slots: tuple) -> str:
        by_path = dict(zip(slots, values))
        text = "".join(p if isinstance(p, str) else by_path[p] for p in parts)
        return re.sub(r"\s+", " ", text).strip()

    def _fill(self, carrier: Carrier, values: tuple) -> str | None:
        """The donor's output with these slot values (None when it does not validate)."""
        out = copy.deepcopy(self.outputs[carrier.example])
        for path, v in zip(carrier.slots, values):
            _set_path(out, path, v)
        try:
            return canonical_json(self.task.output.model_validate(out))
        except Exception:  # noqa: BLE001 - a hint value the schema refuses is simply not used
            return None

    # ---- the Teacher protocol --------------------------------------------------------------------

    def pool(self, n: int, seed: int) -> list[tuple[str, str]]:
        """Up to n distinct (input, canonical output) pairs, classes interleaved, deterministic for a seed."""
        rng = random.Random(f"offline:{seed}")
        taken = {normalize(ex.input) for ex in self.task.examples}
        threshold = getattr(self.cfg, "dedup_threshold", 0.9)
        # each group may make twice its share, so the others fill in for a group that runs dry
        quota = 2 * math.ceil(n / max(1, len(self.groups)))
        per_group: list[list[tuple[str, str]]] = []
        for key in sorted(self.groups):
            bases = []
            for c in [self.carriers[i] for i in self.groups[key]] + self.spliced[key]:
                for values in self._donors(c):
                    label = self._fill(c, values)
                    if label is not None:
                        bases.append((c, values, label))
            rng.shuffle(bases)
            pairs: list[tuple[str, str]] = []
            near = NearDupIndex(threshold)
            for i in self.groups[key]:
                near.add(shingles(self.task.examples[i].input))
            rounds = max(1, min(MAX_VARIANTS, math.ceil(quota / max(1, len(bases))) * 2))
            for r in range(rounds + 1):
                for c, values, label in bases:
                    if len(pairs) >= quota:
                        break
                    parts = c.parts if r == 0 else self._vary(c.parts, rng)
                    if r and c.slots and rng.random() < SLOT_TYPO + SHOUT:
                        parts, values, label = self._reshape(c, parts, values, label, rng)
                    text = self._join(parts, values, c.slots)
                    key_text = normalize(text)
                    if not key_text or key_text in taken:
                        continue
                    taken.add(key_text)
                    sh = shingles(text)
                    if not sh or near.find(sh) is not None:
                        continue  # the near-duplicate check would drop it: try another variant instead
                    near.add(sh)
                    pairs.append((text, label))
            per_group.append(pairs)
        order = []
        for k in range(max((len(p) for p in per_group), default=0)):
            for pairs in per_group:
                if k < len(pairs):
                    order.append(pairs[k])
        return order[:n]

    async def generate_inputs(self, task, n: int, seed: int) -> list[str]:
        pairs = self.pool(n, seed)
        for text, label in pairs:
            self.labels.setdefault(text, label)
        if len(pairs) < n:
            self.shortfall = f"asked for {n} inputs, the examples allow {len(pairs)}"
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

    def note(self) -> str:
        """What the manifest says about how the pairs were made."""
        n_slots = sum(1 for c in self.carriers if c.slots)
        n_spliced = sum(len(v) for v in self.spliced.values())
        text = (f"offline teacher, no LLM: pairs recombined from the task's {len(self.task.examples)} examples "
                f"({n_slots} carrier templates plus {n_spliced} spliced from two examples of a group, with slots "
                f"filled by values from examples with the same other fields or by invented words, in "
                f"{len(self.groups)} groups) plus surface variants (casing, fillers, punctuation, typos). "
                "Pairs with invented slot words read as nonsense on purpose: they teach copying the slot. Slots are "
                "also filled with everyday-word phrases, and variants add politeness, lead-in clauses, emoji, "
                "all capitals and typos inside slots (copied to the label). "
                "Labels are as right as the examples; phrasing variety is limited to the examples' own carriers. "
                "Set OPENAI_API_KEY or OPENAI_BASE_URL for an LLM teacher.")
        if self.shortfall:
            text += f" Short of the target: {self.shortfall}."
        return text
