"""Carriers that put the examples' values in other places of a message, for the offline teacher.

- Reordered: a carrier's text split into clauses at sentence ends, commas and semicolons (never inside brackets,
  never between two slots of one list item, never at a list's own separator), and one clause moved to the front
  or to the end ("lunch with <name> at <place>, an hour should do" -> "an hour should do, lunch with <name> at
  <place>"). Only clauses that hold a word of their own move (a bare name stays put), and a short slot-free
  opening ("hi!") stays first. Where list items change places in the text, the output's list is reordered the
  same way (items follow the text), so the label is true by construction; a nested list never spans clauses.
- Added: the inverse of `derive.null_carriers`: an optional value with the word that introduced it ("in
  <place>", "at <place>") taken from an example where it is present and put into a carrier whose output has
  that field null (after a list, at a clause end, or at the end), the field set in the output. Its own value is
  one of the field's example values holding no cue word, or a new value of its form. Only a word introduces it
  (never a comma, which reads as one more list item), and never a word that is a cue.
"""

from __future__ import annotations

import copy
import random
import re
from typing import Any

from schemabuild.synth.derive import CONNECTOR_RE, SEPARATOR_RE, Carrier, get_path, merge, set_path, words
from schemabuild.synth.shapes import is_nullable, new_value, number_words

BOUNDARY_RE = re.compile(r"(?:[,;]|[.!?]+)\s+")
"""A clause boundary inside a literal: a comma, semicolon or sentence end followed by a space."""
PINNED_WORDS = 2
"""A slot-free first clause of at most this many words (a greeting) stays first."""


def _item(path: tuple) -> tuple | None:
    """The path of the list item a slot belongs to (up to its first index), or None outside lists."""
    for k, key in enumerate(path):
        if isinstance(key, int):
            return path[:k + 1]
    return None


def _neighbours(parts: list[Any], k: int) -> tuple[tuple | None, tuple | None]:
    """The list items (see `_item`) of the slots right before and after literal k, None where not in a list."""
    before = parts[k - 1] if k else None
    after = parts[k + 1] if k + 1 < len(parts) else None
    return (_item(before) if isinstance(before, tuple) else None), (_item(after) if isinstance(after, tuple) else None)


def clauses(parts: list[Any]) -> list[tuple[list[Any], str]]:
    """(clause parts, delimiter after it) in order; the last delimiter is empty."""
    out: list[tuple[list[Any], str]] = []
    current: list[Any] = []
    depth = 0
    for k, p in enumerate(parts):
        if not isinstance(p, str):
            current.append(p)
            continue
        a, b = _neighbours(parts, k)
        locked = bool(a and b and (a == b or (a[:-1] == b[:-1] and SEPARATOR_RE.fullmatch(p.lstrip(") ")))))
        pos = 0
        while not locked and (m := BOUNDARY_RE.search(p, pos)):
            open_ = depth + p[:m.start()].count("(") - p[:m.start()].count(")")
            if open_ > 0 or not (current or p[:m.start()].strip()):
                pos = m.end()  # inside brackets, or nothing before it: look further on
                continue
            out.append((merge(current + [p[:m.start()]]), m.group()))
            current, depth, p, pos = [], open_, p[m.end():], 0
        depth += p.count("(") - p.count(")")
        current.append(p)
    out.append((merge(current), ""))
    return out


def _own_words(parts: list[Any]) -> bool:
    return any(re.search(r"[A-Za-z]", p) for p in parts if isinstance(p, str))


def moves(cl: list[tuple[list[Any], str]]) -> list[list[int]]:
    """Clause orders with one clause moved to the front (after a pinned greeting) or to the end; the message
    never opens with a clause that is only a slot."""
    first = cl[0][0]
    pinned = int(not any(isinstance(p, tuple) for p in first)
                 and len(" ".join(p for p in first if isinstance(p, str)).split()) <= PINNED_WORDS)
    n, out = len(cl), []
    for k in range(pinned, n):
        if not _own_words(cl[k][0]):
            continue
        rest = [j for j in range(pinned, n) if j != k]
        for order in (list(range(pinned)) + [k] + rest, list(range(pinned)) + rest + [k]):
            if order != list(range(n)) and order not in out and _own_words(cl[order[0]][0]):
                out.append(order)
    return out


def _rejoin(cl: list[tuple[list[Any], str]], order: list[int]) -> list[Any]:
    """The clauses in a new order; the last loses a comma or full stop, a clause that was last gets one."""
    stop = ". " if any(d.strip()[:1] in ".!?" and d.strip() for _, d in cl) else ", "
    parts: list[Any] = []
    for pos, k in enumerate(order):
        body, delim = cl[k]
        if pos == len(order) - 1:
            delim = delim.strip().lstrip(",;.") if delim.strip()[:1] in "!?" else ""
        elif not delim:
            tail = next((p for p in reversed(body) if isinstance(p, str)), "")
            delim = " " if tail.rstrip()[-1:] in (".", "!", "?") else stop
        parts += list(body) + [delim]
    return merge(parts)


def _follow_text(parts: list[Any], base: dict) -> tuple[list[Any], dict] | None:
    """Parts and output with every list's items renumbered in the order the text now names them (None when an
    item has no slot to place it, or a nested list's items changed places)."""
    first: dict[tuple, list[int]] = {}
    for p in parts:
        item = _item(p) if isinstance(p, tuple) else None
        if item and item[-1] not in first.setdefault(item[:-1], []):
            first[item[:-1]].append(item[-1])
    remap: dict[tuple, tuple] = {}
    base = copy.deepcopy(base)
    for path, order in first.items():
        items = get_path(base, path)
        if order == list(range(len(order))) and len(order) == len(items):
            continue
        if sorted(order) != list(range(len(items))):
            return None
        set_path(base, path, [items[j] for j in order])
        remap.update({path + (j,): path + (new,) for new, j in enumerate(order)})
    out = []
    for p in parts:
        item = _item(p) if isinstance(p, tuple) else None
        out.append(remap[item] + p[len(item):] if item in remap else p)
    return out, base


def _nested_split(cl: list[tuple[list[Any], str]]) -> bool:
    """Whether a list inside a list item has slots in more than one clause."""
    where: dict[tuple, set] = {}
    for k, (body, _) in enumerate(cl):
        for p in body:
            if isinstance(p, tuple):
                ints = [j for j, key in enumerate(p) if isinstance(key, int)]
                if len(ints) > 1:
                    where.setdefault(p[:ints[1]], set()).add(k)
    return any(len(v) > 1 for v in where.values())


def reordered_carriers(carriers: list[Carrier], outputs: list[dict], share: float, seed: str) -> list[Carrier]:
    """One clause-reordered carrier (see the module docstring) for about `share` of the carriers that have one."""
    rng = random.Random(seed)
    out = []
    for c in carriers:
        cl = clauses(c.parts)
        options = moves(cl) if len(cl) > 1 and not _nested_split(cl) else []
        if not options or rng.random() >= share:
            continue
        made = _follow_text(_rejoin(cl, rng.choice(options)), c.base if c.base is not None else outputs[c.example])
        if made is not None:
            parts, base = made
            out.append(Carrier(parts, c.example, c.group, tuple(p for p in parts if isinstance(p, tuple)), base,
                               "reordered"))
    return out


def _segments(teacher) -> dict[tuple, list[str]]:
    """Optional field path -> the words ("in", "at") that introduce its value in some example."""
    found: dict[tuple, list[str]] = {}
    for c in teacher.carriers:
        for k, path in enumerate(c.parts):
            if not isinstance(path, tuple) or _item(path) or not is_nullable(teacher.schema, path):
                continue
            m = CONNECTOR_RE.search(c.parts[k - 1])
            conn = m.group(1).lower() if m else None
            if conn and conn != "," and not words(conn) & teacher.cues and conn not in found.setdefault(path, []):
                found[path].append(conn)
    return found


def _places(parts: list[Any]) -> list[tuple[int, int]]:
    """(literal index, offset) where a value introduced by a word may go: after a whole list (past its closing
    bracket), before a clause boundary, or at the end before closing punctuation."""
    last = len(parts) - 1
    points = [(last, len(parts[last].rstrip(" .!?")))]
    lists: dict[tuple, int] = {}
    for k, p in enumerate(parts):
        if isinstance(p, tuple) and _item(p):
            lists[_item(p)[:-1]] = k
    for k in lists.values():
        points.append((k + 1, 1 if parts[k + 1].startswith(")") else 0))
    for k, p in enumerate(parts):
        a, b = _neighbours(parts, k)
        if isinstance(p, str) and k != last and not (a and b and a[:-1] == b[:-1]):  # never between two items
            points += [(k, m.start()) for m in BOUNDARY_RE.finditer(p) if m.group().startswith((",", "."))
                       and p.count("(", 0, m.start()) == p.count(")", 0, m.start())]
    return list(dict.fromkeys(points))


def _put(parts: list[Any], at: tuple[int, int], conn: str, path: tuple) -> list[Any]:
    k, o = at
    head, rest = parts[k][:o].rstrip(), parts[k][o:]
    lead = " " + conn + " "
    gap = " " if rest.strip() and rest.lstrip()[0] not in ",.!?;:)" else ""
    return merge(parts[:k] + [head + lead, path, gap + rest.lstrip()] + parts[k + 1:])


def added_carriers(teacher, targets: list[Carrier], share: float, seed: str) -> list[Carrier]:
    """Carriers with an optional value added where their output has it null (see the module docstring)."""
    rng = random.Random(seed)
    out = []
    for path, conns in sorted(_segments(teacher).items()):
        values = [v for v in teacher.seen[path] if isinstance(v, str) and not words(v) & teacher.cues]
        for c in targets:
            base = copy.deepcopy(c.base if c.base is not None else teacher.outputs[c.example])
            try:
                if get_path(base, path) is not None or path in c.slots:
                    continue
            except (KeyError, IndexError, TypeError):
                continue
            for conn in conns:
                places = _places(c.parts)
                if not places or rng.random() >= share:
                    continue
                value = rng.choice(values) if values else new_value(teacher.seen[path][0], "everyday", [], rng)
                set_path(base, path, value)
                parts = _put(c.parts, rng.choice(places), conn, path)
                if _valid(teacher, parts, base):
                    out.append(Carrier(parts, c.example, c.group, tuple(p for p in parts if isinstance(p, tuple)),
                                       copy.deepcopy(base), "added"))
    return out


def _valid(teacher, parts: list[Any], base: dict) -> bool:
    """The output validates and the task's validators accept it with the carrier's own values."""
    text = "".join(p if isinstance(p, str) else str(get_path(base, p)) for p in parts)
    try:
        out = teacher.task.output.model_validate(base)
        for check in teacher.task.validators:
            check(text, out)
    except Exception:  # noqa: BLE001 - a validator's refusal drops the carrier
        return False
    return True


def in_words(parts: list[Any], values: tuple, slots: tuple, rng: random.Random) -> list[Any] | None:
    """Parts with one integer slot of 1-99 written in words ("forty-five"), the label keeping the integer; None
    where none can be (no such slot, or the word already in the text). Capitals where the text is all capitals."""
    by_path = dict(zip(slots, values))
    ints = [p for p in slots if isinstance(by_path[p], int) and number_words(by_path[p])]
    if not ints:
        return None
    path = rng.choice(ints)
    word = number_words(by_path[path])
    text = "".join(p if isinstance(p, str) else str(by_path[p]) for p in parts)
    if re.search(rf"\b{word}\b", text, re.I):
        return None
    letters = [ch for p in parts if isinstance(p, str) for ch in p if ch.isalpha()]
    word = word.upper() if letters and all(ch.isupper() for ch in letters) else word
    return [word if p == path else p for p in parts]
