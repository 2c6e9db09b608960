"""No eval-set word in the generator: a word that occurs in evals/ but nowhere in tasks/ must not occur in
schemabuild/synth/ (everyday English words aside), so nothing that trains can carry what the eval sets measure.

The test reads the eval files only to collect their words; it prints nothing of a row and tunes nothing.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from tests.conftest import EVALS, ROOT, TASKS

SYNTH = ROOT / "schemabuild" / "synth"
# Everyday words: the common English words (function words, pronouns, frequent verbs, nouns and adjectives) and
# everyday chat words. Written once from general knowledge, not from any eval set; never add a word here to make
# this test pass.
EVERYDAY = set("""
a about above after again against all almost also always am an and another any anyone anything are around as ask
at away back be because been before being below best better between both but by call came can cannot could day
did do does doing done down during each early either else end enough even ever every everyone everything few find
first for from full get give go going good got great had has have having he her here hers herself him himself his
how however i if in into is it its itself just keep kind know last later least left less let like little long look
lot made make many may me might mine more most much must my myself need never new next no nobody none nor not
nothing now of off often old on once one only or other our ours out over own part people please put quite rather
really right same say see she should show so some someone something soon still such sure take tell than thank
thanks that the their theirs them then there these they thing things think this those though through to today
together too took two three four five six seven eight nine ten under until up upon us use used very want was way
we well were what whatever when where whether which while who whole whom whose why will with within without would
yes yet you your yours yourself able add again ago agree already although among answer anyway ask asked bad big
bring busy came cannot case change check clear close come coming could course data done else enough especially
feel fine follow found free friend get getting give given glad goes gone happen hard head hear help high hold home
hope hour hours idea important instead keep kept kind least less life line live long lose love made main matter
mean meet might mind minute minutes miss moment money month morning name near need nice night number okay open
order others outside page paper past pay person place plan play point possible post problem quick quickly read
ready real reason remember rest run said saw second seem seen send sent set several short side since small sort
sound speak start stay stop story sure talk team test than thanks time times tonight top try trying turn under
until wait walk week weekend whole word work world write wrong year years yesterday tomorrow tonight monday tuesday
wednesday thursday friday saturday sunday hi hey hello ok okay pls plz thx ty lol yeah yep nope sorry oh um uh hmm
btw also maybe actually just really pretty super thing stuff guys everyone anyone
""".split())
MIN_LEN = 3
# Files of schemabuild/synth/ whose strings never become training text or teacher prompts: API parameter names,
# cache keys and messages to the user. Every other file there (the offline generator, its shapes and derived
# carriers, the teacher prompts in protocol.py) and any new file is checked.
PLUMBING = {"api.py", "batch.py", "cache.py", "checks.py", "collect.py", "formats.py", "stage.py", "teachers.py",
            "__init__.py"}


def words(text: str) -> set[str]:
    """Lowercase alphabetic words of at least MIN_LEN letters (apostrophes split words)."""
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= MIN_LEN}


def eval_words() -> set[str]:
    """Words of every eval set under evals/ (inputs and output strings), minus those of tasks/ and everyday ones."""
    found: set[str] = set()
    for path in sorted(EVALS.rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                found |= words(row["input"]) | words(json.dumps(row["output"], ensure_ascii=False))
    in_tasks = set().union(*(words(p.read_text()) for p in TASKS.glob("*.py")))
    return found - in_tasks - EVERYDAY


def source_words(source: str) -> set[str]:
    """Words of a Python file's string constants, f-strings included: what its code can put into data or a
    prompt. Docstrings (a string standing alone as a statement), comments and names cannot, so they are left out."""
    tree = ast.parse(source)
    standalone = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return set().union(*(words(node.value) for node in ast.walk(tree)
                         if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in standalone))


def leaks(files: list[Path], banned: set[str]) -> list[str]:
    """'file: word' for every banned word in the strings and comments of these files."""
    shown = lambda p: p.relative_to(ROOT) if p.is_relative_to(ROOT) else p  # noqa: E731
    return [f"{shown(p)}: {w}" for p in files for w in sorted(source_words(p.read_text()) & banned)]


def test_no_eval_word_in_the_generator():
    banned = eval_words()
    found = leaks(sorted(p for p in SYNTH.rglob("*.py") if p.name not in PLUMBING), banned)
    assert not found, "eval-set words in schemabuild/synth/ (take them out):\n" + "\n".join(found)


def test_the_check_finds_an_eval_word(tmp_path):
    banned = eval_words()
    assert banned, "the eval sets have words of their own"
    word = min(banned)
    planted = tmp_path / "gen.py"
    planted.write_text(f'"""A {word} in a docstring is fine."""\n'
                       f'NOUNS = ["otter", "{word}"]  # a list that trains\n'
                       f'{word} = 1  # {word}: a name or a comment is fine\n')
    assert leaks([planted], banned) == [f"{planted}: {word}"]
    planted.write_text(planted.read_text().replace(f'"{word}"]', '"owl"]'))
    assert leaks([planted], banned) == []  # only data counts: docstrings, comments and names do not
