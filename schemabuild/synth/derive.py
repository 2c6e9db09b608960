"""New carriers derived from the examples' own, for the offline teacher: what the schema allows beyond them.

- Lists: where an example writes the items of a list one after another, joined by short separators
  ("Dana and Luis", "Aisha from finance, Tom from sales and Jo"), each item's text is an *item form*
  ("<name> from <team>"). New carriers write lists of every length from 1 to the longest example list plus
  `LIST_LONGER`, from the item forms of all examples, joined by the separators the examples use. The output's
  list is rebuilt item by item, so the label is true by construction.
- Optionals: a slot whose field may be null is dropped together with the preposition or comma that
  introduces it ("lunch tomorrow at <place>, an hour" -> "lunch tomorrow, an hour"), and the field set to null.
- Content: a group whose examples have no slots (its label is its content) gets two of its examples joined as one
  message, or crossed at a word both use (`content_carriers`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import re
from typing import Any

from schemabuild.synth.checks import normalize
from schemabuild.synth.shapes import field_key, is_nullable, leaves, schema_leaves

SEPARATOR_RE = re.compile(r"\s*(,|;|&|\+|/|and|or|, and|, or)\s*", re.I)
CONNECTOR_RE = re.compile(r"(,|\b(?:in|at|on|to|of|from|with|by|into|near|for))\s*$", re.I)
"""What may introduce an optional value: dropping it with the value leaves a sentence without a gap."""


@dataclasses.dataclass
class Carrier:
    """An example's input cut around its slots: literal strings and slot paths, in order."""

    parts: list[Any]
    example: int
    group: str
    slots: tuple[tuple, ...]
    base: dict | None = None
    """The output its slots are filled into, when not the example's own (a list rebuilt, a value dropped)."""
    kind: str = "example"
    """example, spliced, list (a list of another length and item forms), null (an optional value dropped), added
    (one added) or reordered (a clause moved: `clauses`), joined or crossed (two slot-free examples of one label made
    one message: `content_carriers`)."""


def set_path(obj: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def get_path(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def merge(parts: list[Any]) -> list[Any]:
    """Adjacent literals joined, so parts alternate literal / slot and begin and end with a literal."""
    out: list[Any] = [""]
    for p in parts:
        if isinstance(p, str) and isinstance(out[-1], str):
            out[-1] += p
        else:
            out.append(p)
    return out + [""] if not isinstance(out[-1], str) else out


def label_leaves(schema: dict, value: Any, path: tuple = ()):
    """(path, value) of every enum or bool leaf of an output: the fields a cue word could decide."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from label_leaves(schema, v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from label_leaves(schema, v, path + (i,))
    elif any("enum" in b or "const" in b or b.get("type") == "boolean" for b in schema_leaves(schema, path)):
        yield path, value


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def _opens(parts: list[Any]) -> int:
    text = "".join(p for p in parts if isinstance(p, str))
    return text.count("(") - text.count(")")


def list_hosts(carrier: Carrier, output: dict) -> list[tuple]:
    """(list path, prefix parts, [(item parts, item output)], separators, suffix parts) per list written joinably."""
    found = []
    for path, value in _lists(output):
        n = len(value)
        at = [[k for k, p in enumerate(carrier.parts) if isinstance(p, tuple) and p[:len(path) + 1] == path + (j,)]
              for j in range(n)]
        if not all(at) or any(at[j][-1] + 2 != at[j + 1][0] for j in range(n - 1)):
            continue  # an item without a slot, or items not one literal apart
        items, seps, ok = [], [], True
        for j in range(n):
            body = [p if isinstance(p, str) else p[len(path) + 1:] for p in carrier.parts[at[j][0]:at[j][-1] + 1]]
            after = carrier.parts[at[j][-1] + 1]
            close = ")" if _opens(body) > 0 and after.startswith(")") else ""
            items.append((body + ([close] if close else []), value[j]))
            if j < n - 1:
                sep = after[len(close):]
                ok = ok and bool(SEPARATOR_RE.fullmatch(sep))
                seps.append(sep)
        if not ok:
            continue
        last_close = ")" if items[-1][0][-1] == ")" else ""
        suffix = [carrier.parts[at[-1][-1] + 1][len(last_close):]] + carrier.parts[at[-1][-1] + 2:]
        found.append((path, carrier.parts[:at[0][0]], items, seps, suffix))
    return found


def _lists(value: Any, path: tuple = ()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _lists(v, path + (k,))
    elif isinstance(value, list) and value:
        yield path, value


def list_carriers(teacher, rng: random.Random, shapes: int, longer: int) -> list[Carrier]:
    """Carriers with lists of every length up to the longest example list + `longer`, items from all examples."""
    hosts, forms, seps = [], {}, {}
    for c in teacher.carriers:
        for path, prefix, items, sep, suffix in list_hosts(c, teacher.outputs[c.example]):
            hosts.append((c, path, prefix, suffix))
            forms.setdefault(field_key(path), []).extend(items)
            seps.setdefault(field_key(path), []).extend(sep)
    out = []
    for c, path, prefix, suffix in hosts:
        key = field_key(path)
        joins = seps[key] or [", "]
        commas = [s for s in joins if s.strip() == ","] or joins
        top = max(len(get_path(teacher.outputs[i], path)) for i in range(len(teacher.outputs))
                  if _has(teacher.outputs[i], path)) + longer
        for k in range(1, top + 1):
            for _ in range(shapes):
                chosen = [rng.choice(forms[key]) for _ in range(k)]
                parts: list[Any] = list(prefix)
                for j, (body, _) in enumerate(chosen):
                    parts += [p if isinstance(p, str) else path + (j,) + p for p in body]
                    if j < k - 1:
                        parts.append(rng.choice(joins) if j == k - 2 else rng.choice(commas))
                parts = merge(parts + list(suffix))
                base = copy.deepcopy(teacher.outputs[c.example])
                set_path(base, path, [copy.deepcopy(item) for _, item in chosen])
                slots = tuple(p for p in parts if isinstance(p, tuple))
                out.append(Carrier(parts, c.example, c.group, slots, base, "list"))
    return out


def _has(output: dict, path: tuple) -> bool:
    try:
        return isinstance(get_path(output, path), list)
    except (KeyError, IndexError, TypeError):
        return False


def null_carriers(teacher) -> list[Carrier]:
    """Carriers with one optional value dropped, with the word or comma that introduced it; the field is null."""
    out = []
    for c in teacher.carriers:
        for path in c.slots:
            if any(isinstance(k, int) for k in path) or not is_nullable(teacher.schema, path):
                continue
            k = c.parts.index(path)
            m = CONNECTOR_RE.search(c.parts[k - 1])
            if not m:
                continue
            before, after = c.parts[k - 1][:m.start()].rstrip(), c.parts[k + 1]
            joined = before + ("" if not after or after[0] in ",.!?;:)" else " ") + after.lstrip()
            parts = merge(c.parts[:k - 1] + [joined] + c.parts[k + 2:])
            base = copy.deepcopy(teacher.outputs[c.example])
            set_path(base, path, None)
            out.append(Carrier(parts, c.example, c.group, tuple(p for p in parts if isinstance(p, tuple)), base, "null"))
    return out


def derive_carriers(teacher, seed: str = "derive", shapes: int = 3, longer: int = 3) -> list[Carrier]:
    """The list and null carriers of a teacher's examples (deterministic)."""
    rng = random.Random(seed + json.dumps(teacher.outputs, sort_keys=True))
    return list_carriers(teacher, rng, shapes, longer) + null_carriers(teacher)


JOINS = [". ", ", ", "! ", " and ", " ", "... "]
"""How two messages of a group without slots are joined into one of several sentences."""


def content_carriers(teacher, members: list[int]) -> list[Carrier]:
    """New wording for a group whose examples have no slots (for tool_picker: no_tool), whose label is their
    content: two of its examples joined as one message of several sentences, and two of them crossed at a word
    both use ("hey billy how are you doing today" x "thanks billy you're the best" -> "hey billy you're the
    best"). Only where the output holds label values and nulls alone, so no count or free value could change with the text (two
    messages of one label keep it). At most as many of each as the group has examples, so single messages
    stay a good share of its rows."""
    if len(members) < 2 or any(teacher.carriers[i].slots for i in members):
        return []
    out = teacher.outputs[members[0]]
    labels = {path for path, _ in label_leaves(teacher.schema, out)}
    if any(path not in labels for path, _ in leaves(out)):
        return []
    rng = random.Random("content:" + teacher.carriers[members[0]].group)
    texts = {i: teacher.task.examples[i].input.strip() for i in members}
    pairs = [(i, j) for i in members for j in members if i != j]
    rng.shuffle(pairs)
    joined, crossed, seen = [], [], {normalize(t) for t in texts.values()}
    for i, j in pairs:
        a, b = texts[i], texts[j]
        if len(joined) < len(members):
            sep = rng.choice(JOINS) if a[-1].isalnum() else " "
            joined.append(a + sep + (b[0].upper() + b[1:] if sep.strip() in ".!?" and sep.strip() else b))
        wa, wb = a.split(), b.split()
        shared = [w for w in dict.fromkeys(wa[1:]) if len(w) >= 3 and wa.count(w) == 1 and wb.count(w) == 1]
        if shared and len(crossed) < len(members):
            w = rng.choice(shared)
            text = " ".join(wa[:wa.index(w)] + wb[wb.index(w):])
            if normalize(text) not in seen:
                crossed.append(text)
        seen.update(normalize(t) for t in joined + crossed)
    group = teacher.carriers[members[0]].group
    return [Carrier([t], members[0], group, (), kind=kind) for kind, made in (("joined", joined), ("crossed", crossed))
            for t in dict.fromkeys(made)]
