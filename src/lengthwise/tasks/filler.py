"""Haystacks: prose from CPython's own documentation, or RULER's noise sentences, with needles woven in.

Prose ("essay") comes from `pydoc_data.topics.topics`, the text behind `help("topic")` that ships with
CPython under the PSF License Agreement (Python Software Foundation). It is split into sentences, reST
markup is dropped, code-ish sentences are skipped, and the sentences are cycled from a seeded offset.
That text changes between CPython releases, so the cleaned sentences of one release (3.12.3) are frozen
in `data/essay.txt.gz` (licence and changes: `data/ESSAY_NOTICE.txt`): prompts are the same on every
Python. `python -m lengthwise.tasks.filler path/to/pydoc_data/topics.py` rebuilds the snapshot.
"""
from __future__ import annotations

import ast
import functools
import gzip
import random
import re
import sys
from pathlib import Path

NOISE = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
HAYSTACKS = ("essay", "noise")
ESSAY_FROM = "3.12.3"  # the CPython release whose pydoc_data.topics the snapshot was cleaned from
SNAPSHOT = Path(__file__).parent / "data" / "essay.txt.gz"
SOURCE = {"essay": f"pydoc_data.topics (CPython {ESSAY_FROM}, PSF License), frozen in lengthwise",
          "noise": "RULER noise sentences"}

_ABBREV = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "Mr.", "Dr.", "No.")
_PROSE_CHARS = re.compile(r"[A-Za-z0-9 ,.;:'\"’‘“”()\-?!]")


def _clean(text: str) -> str:
    text = re.sub(r"\*\*?([^*\s][^*]*?)\*\*?", r"\1", text)  # *emphasis*, **strong**
    text = re.sub(r"\[\d+\]", "", text)  # footnote marks
    text = re.sub(r"\b(Changed|New|Added) in version [\d.]+:?\s*", "", text)
    text = re.sub(r"\bDeprecated since version [\d.]+[^:]*:\s*", "", text)
    text = re.sub(r"^(See also|Note|Warning|Hint):\s*", "", text)
    return " ".join(text.split())


def _sentences(text: str) -> list[str]:
    out = []
    for piece in re.split(r"(?<=[.!?])\s+(?=[A-Z\"“])", text):
        if out and out[-1].endswith(_ABBREV):
            out[-1] += " " + piece
        else:
            out.append(piece)
    return out


def _is_prose(s: str) -> bool:
    if not (15 <= len(s) <= 400 and s[0].isupper() and s.endswith((".", "?", "!")) and len(s.split()) >= 4):
        return False
    if any(bad in s for bad in (">>>", "::", "==", "->", "...", '""', "http", "+--", "|")):
        return False
    return len(_PROSE_CHARS.findall(s)) >= 0.97 * len(s)


def clean_topics(topics: dict[str, str]) -> list[str]:
    """The prose sentences of a pydoc_data.topics dict, in topic order: what the snapshot holds."""
    out = []
    for name in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[name]):
            lines = [l for l in para.split("\n") if l.strip()]
            if not lines or re.fullmatch(r"[*=\-~^]+", lines[-1].strip()):  # a heading
                continue
            text = re.sub(r"(?<=\w)- (?=\w)", "-", " ".join(l.strip() for l in lines))  # words split at a hyphen
            out += [s for s in _sentences(_clean(text)) if _is_prose(s)]
    return out


@functools.cache
def essay_sentences() -> tuple[str, ...]:
    """The frozen prose sentences (one per line in the snapshot); the running Python's own docs are not read."""
    with gzip.open(SNAPSHOT, "rt", encoding="utf-8") as f:
        return tuple(f.read().split("\n"))


def freeze(topics_py: str | Path, out: str | Path = SNAPSHOT) -> int:
    """Write the snapshot from a CPython `pydoc_data/topics.py` (read as a literal, never executed)."""
    tree = ast.parse(Path(topics_py).read_text(encoding="utf-8"))
    topics = next(ast.literal_eval(n.value) for n in tree.body
                  if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "topics" for t in n.targets))
    sents = clean_topics(topics)
    assert all("\n" not in s for s in sents)
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:  # byte-stable
        f.write("\n".join(sents).encode("utf-8"))
    return len(sents)


def haystack(kind: str, rng: random.Random, n: int) -> list[str]:
    """Filler sentences holding n units: words for "essay" (the last sentence may be cut), sentences for "noise".

    Draws from rng only the essay's starting sentence, the same draw whatever n is.
    """
    if kind == "noise":
        return [NOISE[i % len(NOISE)] for i in range(n)]
    sents = essay_sentences()
    i, out, words = rng.randrange(len(sents)), [], 0
    while words < n:
        s = sents[i % len(sents)].split(" ")
        out.append(" ".join(s[: n - words]))
        words += len(s)
        i += 1
    return out


def weave(sentences: list[str], inserts: list[tuple[float, str]]) -> tuple[str, list[int]]:
    """Join sentences with each (fraction, text) insert at that fraction of the sentence boundaries.

    0 puts it before the first sentence, 1 after the last; inserts at one boundary keep their list order.
    Returns the text and each insert's character offset in it (in the order given).
    """
    n = len(sentences)
    at: dict[int, list[int]] = {}
    for j, (f, _) in enumerate(inserts):
        at.setdefault(round(f * n), []).append(j)
    pieces, offsets, pos = [], [0] * len(inserts), 0
    for b in range(n + 1):
        for j in at.get(b, ()):
            offsets[j] = pos
            pieces.append(inserts[j][1])
            pos += len(inserts[j][1]) + 1
        if b < n:
            pieces.append(sentences[b])
            pos += len(sentences[b]) + 1
    return " ".join(pieces), offsets


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m lengthwise.tasks.filler path/to/pydoc_data/topics.py")
    print(f"wrote {freeze(sys.argv[1])} sentences to {SNAPSHOT}")
