"""What the offline teacher knows about an output schema and its values, for any task.

- which leaves of an output are free text, integers, or may be null (from the JSON schema);
- integers written in English words (`number_words`);
- new values shaped like the examples' own: numbers of the same step and range, ids with the same letters and
  digit count, people's names where the examples hold names, pronounceable invented words, everyday phrases.

Every word list here is general knowledge of English and of common names, never taken from an eval set
(tests/test_eval_words.py checks it).
"""

from __future__ import annotations

import math
import random
import re
from typing import Any

# A generic vocabulary: real words in new combinations, so the model learns to copy any words, not only the
# examples' values or invented ones. Nothing here is about any one task.
ADJECTIVES = ("tiny old red angry happy giant rainy frozen golden ancient wild quiet shiny broken fluffy spicy "
              "haunted floating purple retro cozy noisy secret lazy brave weird neon velvet dusty").split()
NOUNS = ("otter castle robot pancake volcano bicycle dragon library teapot submarine cactus skyscraper violin "
         "meteor garden hamster train forest lantern pirate wizard taco comet island tractor owl glacier marathon "
         "circus canyon waterfall spaceship sandwich orchestra festival walrus kettle harbor").split()
VERBS_ING = "dancing racing singing falling cooking melting spinning hiding glowing drifting".split()
VERBS = "build paint clean grow draw fold cook repair tune".split()
# People's names from many languages, for slots whose example values are names.
FIRST_NAMES = ("Mira Kenji Arjun Elena Tomas Amara Felix Ravi Olga Bruno Ayesha Lars Keiko Tunde Marisol Idris "
               "Petra Joaquin Sunita Henrik Chiara Kofi Svetlana Arturo Malia Dev Ines Oskar Thandi Bjorn Yara "
               "Matteo Linh Farah Rohan Astrid Emil Noor Caleb Fiona").split()
SURNAMES = ("Solano Brandt Duarte Lindqvist Moreau Castillo Petrova Ibrahim Kaur Eriksen Mensah Ortega Sato "
            "Varga Whitfield Ferreira Nakamura Abbott Delacroix Horvat Quinn Obi").split()
CONSONANTS, VOWELS = "bcdfghjklmnprstvwz", "aeiou"
# English number words (general knowledge), for integers written as words. The tens word for 20 is left out:
# tests/test_eval_words.py finds it in an eval set and in no task file, so 20-29 stay digits (see number_words).
UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
TENS = [None, None, None] + "thirty forty fifty sixty seventy eighty ninety".split()
NAME_RE = re.compile(r"[A-Z][\w'.-]*( [A-Z][\w'.-]*){0,2}")
ID_RE = re.compile(r"(?=.*\d)[A-Za-z0-9][A-Za-z0-9_/-]{2,}")


def leaves(value: Any, path: tuple = ()):
    """(path, value) for every string and integer leaf of a JSON value (bools are not integers here)."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, path + (i,))


def field_key(path: tuple) -> tuple:
    """A path without its list indices: ("guests", 2, "name") -> ("guests", "name")."""
    return tuple(k for k in path if isinstance(k, str))


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


def schema_leaves(schema: dict, path: tuple) -> list[dict]:
    """The schema branches (refs resolved, unions flattened) that the value at `path` may take."""
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
            return []
        nodes = nxt
    return [b for n in nodes for b in _branches(n, defs)]


def is_free_text(schema: dict, path: tuple) -> bool:
    """Whether the value at `path` is a plain string (no enum/const/pattern/format)."""
    leaves_ = schema_leaves(schema, path)
    strings = [b for b in leaves_ if b.get("type") == "string"]
    return bool(strings) and all(not (set(b) & {"enum", "const", "pattern", "format"}) for b in strings) \
        and not any("enum" in b or "const" in b for b in leaves_)


def is_integer(schema: dict, path: tuple) -> bool:
    """Whether the value at `path` is a plain integer (not an enum of numbers)."""
    kinds = [b for b in schema_leaves(schema, path) if b.get("type") != "null"]
    return bool(kinds) and all(b.get("type") == "integer" and not (set(b) & {"enum", "const"}) for b in kinds)


def is_nullable(schema: dict, path: tuple) -> bool:
    return any(b.get("type") == "null" for b in schema_leaves(schema, path))


def looks_like_name(value: str) -> bool:
    """One to three capitalised words ("Dana", "Wei Chen"): a person, place or brand."""
    return bool(NAME_RE.fullmatch(value)) and not any(ch.isdigit() for ch in value)


def looks_like_id(value: str) -> bool:
    """One token with a digit in it ("B55501", "INV-2207"): an id or code."""
    return bool(ID_RE.fullmatch(value)) and not value.isdigit()


def new_id(value: str, rng: random.Random) -> str:
    """An id of the same shape: letters and separators kept, each digit redrawn (no new leading zero)."""
    out = [rng.choice("0123456789") if ch.isdigit() else ch for ch in value]
    first = next((i for i, ch in enumerate(value) if ch.isdigit()), None)
    if first is not None and value[first] != "0" and out[first] == "0":
        out[first] = rng.choice("123456789")
    return "".join(out)


def new_number(seen: list[int], rng: random.Random) -> int:
    """An integer like the examples': a multiple of their common step, up to twice their largest."""
    positive = [v for v in seen if v > 0]
    if not positive:
        return rng.randint(1, 20)
    step = math.gcd(*positive)
    step = step if 1 < step < max(positive) else 1
    hi = max(2 * max(positive), step * 4)
    return step * rng.randint(1, max(1, hi // step))


def number_words(n: int) -> str | None:
    """An integer from 1 to 99 in English words ("seven", "thirty", "forty-five"); None outside that range and
    for 20-29 (see TENS)."""
    if not 0 < n < 100:
        return None
    if n < 20:
        return UNITS[n]
    tens = TENS[n // 10]
    return tens + ("-" + UNITS[n % 10] if n % 10 else "") if tens else None


def new_name(rng: random.Random, words: int = 1) -> str:
    first = rng.choice(FIRST_NAMES)
    return first if words < 2 else f"{first} {rng.choice(SURNAMES)}"


def invented_words(rng: random.Random, k: int, capital: float = 0.2) -> str:
    """k pronounceable made-up words (1-3 syllables, sometimes capitalised)."""
    words = []
    for _ in range(k):
        w = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) + (rng.choice(CONSONANTS) if rng.random() < 0.4 else "")
                    for _ in range(rng.randint(1, 3)))
        words.append(w.capitalize() if rng.random() < capital else w)
    return " ".join(words)


def everyday_phrase(rng: random.Random) -> str:
    """A short phrase of real words (e.g. "a lazy otter", "owls dancing", "how to fold a teapot", "Mira Solano")."""
    adj, noun, other = rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(NOUNS)
    forms = [f"{adj} {noun}", f"a {adj} {noun}", f"the {noun} of the {other}", f"{noun}s {rng.choice(VERBS_ING)}",
             f"how to {rng.choice(VERBS)} a {noun}", new_name(rng, 2), f"{adj} {noun} {other}s",
             f"{noun} {rng.randint(2, 99)}"]
    return rng.choice(forms)


def new_value(original: Any, style: str, seen: list, rng: random.Random) -> Any:
    """A replacement for one slot value, shaped like it.

    style: "examples" (another example's value of the same field), "madeup" or "everyday"; numbers, ids and names
    always keep their shape (a number like the field's numbers, an id with the same letters, a name).
    """
    if isinstance(original, int):
        return rng.choice(seen) if style == "examples" and seen else new_number(seen, rng)
    if looks_like_id(original):
        return new_id(original, rng)
    if style == "examples" and seen:
        return rng.choice(seen)
    if looks_like_name(original):
        if style == "madeup":
            return invented_words(rng, len(original.split()), capital=1.0)
        return new_name(rng, len(original.split()))
    if style == "madeup":
        return invented_words(rng, rng.randint(1, 4))
    return everyday_phrase(rng)
