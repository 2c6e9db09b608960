"""A truth-knowing teacher for tasks/meeting_invite.py: it writes the inputs itself, so it knows every label.

    python -m tests.truth_teacher --write evals/meeting_invite.jsonl --seed heldout --n 80   # the held-out rows
    python -m tests.truth_teacher --serve --seed train --exclude evals/meeting_invite.jsonl  # an OpenAI endpoint

`write_invite(rng)` composes one chat message (greeting, context, request in one of several forms, guests, length,
place or online cue, time, sign-off, sometimes typos or lowercase) from its own phrase pools and returns it with
its true output. `TruthServer` is `tests.fake_openai.FakeOpenAI` answering generation calls with messages written
from (its seed, the call's seed) and label calls with the true label of each message it wrote. Nothing here is
shared with schemabuild/synth: the offline generator must never see these pools.
"""

from __future__ import annotations

import json
import random
import re

from tests.fake_openai import GENERATE_MARK, JUDGE_MARK, FakeOpenAI, system_text, user_text

FIRST = ("Priya Mateo Yuki Fatima Oliver Chloe Dmitri Aaliyah Gabriel Ingrid Kwame Sofia Ethan Mei Rashid Camila Noah "
         "Zara Felipe Hiroshi Amelia Tariq Beatriz Liam Anya Jamal Greta Diego Leila Connor Nadia Viktor Rosa "
         "Isaac Hana Emeka Claire Pavel Lucia Ben").split()
LAST = "Okafor Lindgren Tanaka Moreno Kowalski Haddad Nguyen Brennan Silva Fischer Adeyemi Rossi Patel Novak".split()
TEAMS = ["marketing", "legal", "engineering", "HR", "support", "product", "design", "IT", "procurement", "QA",
         "ops", "data science", "customer success", "security"]
COMPANIES = ["Umbrella Corp", "Vandelay Industries", "Northwind", "Contoso", "Hooli", "Stark Industries",
             "Wayne Enterprises", "Cyberdyne", "Pied Piper", "Dunder Mifflin", "Oceanic", "Tyrell"]
ROOMS = ["room 12", "Room 210", "conference room B", "the Atrium", "the Oak Room", "the boardroom",
         "meeting room 7", "the fishbowl", "huddle room 3", "the library", "the big conference room",
         "the Maple room", "studio 2", "the training room", "the 5th floor lounge"]
VENUES = ["Pho Saigon", "Bella Napoli", "Green Leaf Cafe", "the cafeteria", "Joe's Pizza", "the taco truck",
          "Sakura Sushi", "the food court", "Olive & Thyme", "Burger Barn", "the noodle bar downstairs",
          "Casa Lupita", "the canteen"]
WRITERS = ["Mike", "Karen", "Steve", "Jen", "Ali", "Bob", "Deb", "Raúl"]
WHEN = ["tomorrow", "on Friday", "next Tuesday at 2pm", "this afternoon", "sometime next week", "Monday morning",
        "at 10:30", "on the 14th", "Thursday at 11", "later today", "first thing tomorrow", "after the all-hands",
        "on Wednesday around 4", "before end of month", ""]
CONTEXT = ["Hope your week is going well.", "We're kicking off the Q3 roadmap.", "The client signed off on the draft.",
           "Quick admin thing.", "Following up on yesterday's thread.", "We finally have budget approval.",
           "The new hire starts soon.", "Things have been hectic lately.", "I just got out of the offsite.",
           "So, the launch slipped again.", "Got a favor to ask."]
GREETINGS = ["hey", "hi", "Hi there,", "Morning!", "hello", "yo", "Good afternoon,", "hey there", ""]
SIGNOFFS = ["thanks!", "ty", "cheers", "thx in advance", "Thanks so much.", "appreciate it", "🙏", ""]

# minutes -> ways of writing them (digits as an adjective or after "for", or words)
DIGIT_MINUTES = [10, 15, 20, 25, 30, 40, 45, 50, 60, 75, 90, 120]
WORD_MINUTES = {30: ["half an hour", "30 mins"], 60: ["an hour", "one hour", "1 hour", "a full hour"],
                90: ["an hour and a half", "1.5 hours"], 120: ["two hours", "2 hours"], 15: ["a quarter of an hour"],
                45: ["three quarters of an hour"]}
KIND_NOUNS = {"meeting": ["meeting", "sync", "catch-up", "check-in", "planning session", "review", "kickoff meeting"],
              "call": ["call", "phone call", "video call", "conference call", "quick call"],
              "lunch": ["lunch", "team lunch", "working lunch", "lunch outing"],
              "interview": ["interview", "candidate interview", "technical interview", "final-round interview"]}
ONLINE_CUES = ["on Zoom", "over Teams", "on Google Meet", "remotely", "online", "via video", "over webex",
               "as a virtual session"]
IN_PERSON_CUES = ["in person", "face to face", "in-person"]
VERBS = ["set up", "schedule", "book", "arrange", "organize", "put together", "sort out", "pencil in"]


def _guests(rng: random.Random) -> list[tuple[str, str | None, str]]:
    """(name, team or None, how it is written) for 1-5 guests."""
    k = rng.choices([1, 2, 3, 4, 5], weights=[32, 30, 20, 12, 6])[0]
    names = rng.sample(FIRST, k)
    out = []
    for first in names:
        name = f"{first} {rng.choice(LAST)}" if rng.random() < 0.25 else first
        if rng.random() < 0.35:
            team = rng.choice(COMPANIES if rng.random() < 0.4 else TEAMS)
            form = rng.choice(["{n} from {t}", "{n} ({t})", "{n} in {t}" if team in TEAMS else "{n} at {t}"])
            out.append((name, team, form.format(n=name, t=team)))
        else:
            out.append((name, None, name))
    return out


def _join(parts: list[str], rng: random.Random) -> str:
    if len(parts) == 1:
        return parts[0]
    last = rng.choice([" and ", ", and ", " & ", " plus "]) if len(parts) > 2 else rng.choice([" and ", " & "])
    return ", ".join(parts[:-1]) + last + parts[-1]


def _minutes(rng: random.Random) -> tuple[int, str, bool]:
    """(minutes, text, whether the text is an adjective like '30-minute')."""
    if rng.random() < 0.3:
        m = rng.choice(list(WORD_MINUTES))
        return m, rng.choice(WORD_MINUTES[m]), False
    m = rng.choice(DIGIT_MINUTES)
    if rng.random() < 0.35:
        return m, rng.choice([f"{m}-minute", f"{m} minute", f"{m} min"]), True
    return m, rng.choice([f"{m} minutes", f"{m} min", f"{m} mins", f"{m}min"]), False


def _typo(text: str, protected: list[str], rng: random.Random) -> str:
    """Swap two letters of one word of 5+ letters that is not part of a label value."""
    keep = {w.lower() for p in protected for w in re.findall(r"\w+", p)}
    words = [m for m in re.finditer(r"[A-Za-z]{5,}", text) if m.group().lower() not in keep]
    if not words:
        return text
    m = rng.choice(words)
    w, k = m.group(), rng.randrange(1, len(m.group()) - 2)
    return text[:m.start()] + w[:k] + w[k + 1] + w[k] + w[k + 2:] + text[m.end():]


def write_invite(rng: random.Random) -> tuple[str, dict]:
    """One message and its true meeting_invite output."""
    kind = rng.choice(["meeting", "meeting", "call", "lunch", "interview"])
    online = {"call": True, "lunch": False}.get(kind, rng.random() < 0.45)
    minutes, dur, adjective = _minutes(rng)
    guests = _guests(rng)
    noun = rng.choice(KIND_NOUNS[kind])
    place = None
    where = ""
    if not online and rng.random() < 0.7:
        place = rng.choice(VENUES if kind == "lunch" else ROOMS)
        where = f"at {place}" if kind == "lunch" else f"in {place}"
    elif online and kind != "call":
        where = rng.choice(ONLINE_CUES)
    elif not online and kind != "lunch":
        where = rng.choice(IN_PERSON_CUES)
    who = _join([g[2] for g in guests], rng)
    when = rng.choice(WHEN)
    mods = [m for m in (where, when) if m]
    rng.shuffle(mods)
    tail = (" " + " ".join(mods)) if mods else ""
    head_noun = f"{dur} {noun}" if adjective else noun
    form = rng.randrange(6 if len(guests) == 1 else 5)  # "<guest> and I need ..." only with one guest
    afters = [f" for {dur}", f", {dur}", f" ({dur})", f", keep it to {dur}"]
    if form not in (1, 3):  # not inside a question
        afters.append(f". Should take {dur}")
    dur_after = "" if adjective else rng.choice(afters)
    art = "an" if head_noun[0] in "aeiou" else "a"
    if form == 0:
        req = f"{rng.choice(VERBS)} {art} {head_noun} with {who}{tail}{dur_after}"
    elif form == 1:
        req = f"could you {rng.choice(VERBS)} {art} {head_noun} with {who}{tail}{dur_after}?"
    elif form == 2:
        req = f"I need {art} {head_noun} with {who}{tail}{dur_after}"
    elif form == 3:
        req = f"any chance you can get {art} {head_noun} on the calendar with {who}{tail}{dur_after}?"
    elif form == 4:
        req = f"please {rng.choice(VERBS)} {art} {head_noun}{tail} with {who}{dur_after}"
    else:
        req = f"{who} and I need {art} {head_noun}{tail}{dur_after}. Can you send the invite?"
    pieces = [rng.choice(GREETINGS)]
    if rng.random() < 0.35:
        pieces.append(rng.choice(CONTEXT))
    pieces.append(req[0].upper() + req[1:] if rng.random() < 0.6 else req)
    sign = rng.choice(SIGNOFFS)
    if rng.random() < 0.15:
        sign = (sign + " " if sign else "") + "- " + rng.choice([w for w in WRITERS if w not in who])
    pieces.append(sign)
    text = " ".join(p for p in pieces if p)
    text = re.sub(r"\s+", " ", text).strip()
    out = {"kind": kind, "online": online, "minutes": minutes, "place": place,
           "guests": [{"name": n, "team": t} for n, t, _ in guests]}
    if rng.random() < 0.15:
        text = _typo(text, [place or ""] + [g[2] for g in guests], rng)
    if rng.random() < 0.1:  # all lowercase: the copied values follow
        text = text.lower()
        out["place"] = place.lower() if place else None
        out["guests"] = [{"name": g["name"].lower(), "team": g["team"].lower() if g["team"] else None}
                         for g in out["guests"]]
    return text, out


def write_rows(seed: str, n: int, exclude: set[str] = frozenset()) -> list[dict]:
    """n distinct rows from one seed, none of whose texts is in `exclude`."""
    rng = random.Random(f"truth:{seed}")
    rows, seen = [], set(exclude)
    while len(rows) < n:
        text, out = write_invite(rng)
        if text not in seen:
            seen.add(text)
            rows.append({"input": text, "output": out})
    return rows


class TruthServer(FakeOpenAI):
    """An OpenAI-compatible loopback server that writes meeting_invite messages and labels them truthfully."""

    def __init__(self, seed: str = "train", exclude: set[str] = frozenset()):
        super().__init__(responder=self.respond)
        self.seed = seed
        self.exclude = set(exclude)
        self.truth: dict[str, dict] = {}
        """Every message this server wrote -> its true output."""

    def respond(self, body: dict) -> str:
        system = system_text(body)
        if system.startswith(GENERATE_MARK):
            k = int(m.group(1)) if (m := re.search(r"Write exactly (\d+)", user_text(body))) else 5
            rng = random.Random(f"truth:{self.seed}:{body.get('seed')}:{body.get('temperature')}")
            texts = []
            while len(texts) < k:
                text, out = write_invite(rng)
                if text in self.exclude:
                    continue
                with self._lock:
                    self.truth.setdefault(text, out)
                texts.append(text)
            return json.dumps({"inputs": texts})
        if system.startswith(JUDGE_MARK):
            return json.dumps({"reason": "true label", "score": 5})
        return json.dumps(self.truth.get(user_text(body), {}))


if __name__ == "__main__":
    import argparse
    import time
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", default="train")
    parser.add_argument("--n", type=int, default=80)
    parser.add_argument("--write", type=Path, help="write n rows from --seed to this JSONL file and exit")
    parser.add_argument("--serve", action="store_true", help="serve until interrupted")
    parser.add_argument("--exclude", type=Path, action="append", default=[], help="JSONL rows never to write")
    args = parser.parse_args()
    exclude = {json.loads(x)["input"] for p in args.exclude for x in p.read_text().splitlines() if x.strip()}
    if args.write:
        rows = write_rows(args.seed, args.n, exclude)
        args.write.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"wrote {len(rows)} rows to {args.write}")
    if args.serve:
        with TruthServer(args.seed, exclude) as server:
            print(f"OPENAI_BASE_URL={server.url}", flush=True)
            while True:
                time.sleep(3600)
