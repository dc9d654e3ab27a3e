"""Haystacks: prose from CPython's own documentation, or RULER's noise sentences, with needles woven in.

Prose ("essay") comes from `pydoc_data.topics.topics`, the text behind `help("topic")` that ships with
CPython under the PSF License Agreement (Python Software Foundation). It is split into sentences, reST
markup is dropped, code-ish sentences are skipped, and the sentences are cycled from a seeded offset.
The text varies a little between CPython versions, so `SOURCE` names the version (stored in each sample).
"""
from __future__ import annotations

import functools
import random
import re
import sys

NOISE = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
HAYSTACKS = ("essay", "noise")
SOURCE = {"essay": "pydoc_data.topics (CPython {}.{}.{}, PSF License)".format(*sys.version_info[:3]),
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


@functools.cache
def essay_sentences() -> tuple[str, ...]:
    """The cleaned prose sentences of pydoc_data.topics, in topic order."""
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[name]):
            lines = [l for l in para.split("\n") if l.strip()]
            if not lines or re.fullmatch(r"[*=\-~^]+", lines[-1].strip()):  # a heading
                continue
            text = re.sub(r"(?<=\w)- (?=\w)", "-", " ".join(l.strip() for l in lines))  # words split at a hyphen
            out += [s for s in _sentences(_clean(text)) if _is_prose(s)]
    return tuple(out)


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
