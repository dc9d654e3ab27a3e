"""Needle in a haystack, RULER's four variants (Hsieh et al., "RULER", 2024).

Word keys with 7-digit values hidden in prose or noise: one needle, distractor keys (multikey),
several values for one key (multivalue), or several keys asked at once (multiquery).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import LengthwiseError
from . import words
from .base import Draft, Task
from .filler import HAYSTACKS, SOURCE, haystack, weave


def join(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True)
class NIAH(Task):
    """The queried key's first needle sits at `depth`; every other needle at a uniform random place."""
    haystack: str = "essay"
    num_needles: int = 1  # distinct keys in the text
    num_values: int = 1  # values per key
    num_queries: int = 1  # keys asked for

    def check(self):
        if self.haystack not in HAYSTACKS:
            raise LengthwiseError(f"task {self.name}: haystack must be one of {', '.join(HAYSTACKS)}, "
                                  f"got {self.haystack!r}")
        if not (self.num_needles >= 1 and self.num_values >= 1 and 1 <= self.num_queries <= self.num_needles):
            raise LengthwiseError(f"task {self.name}: need num_needles, num_values >= 1 "
                                  "and 1 <= num_queries <= num_needles")

    def unit_tokens(self, length: int) -> float:
        return 5.0 if self.haystack == "noise" else 1.4  # a noise sentence or an essay word

    def build(self, rng: random.Random, n: int, length: int, depth: float) -> Draft:
        sents = haystack(self.haystack, rng, n)
        keys = words.distinct(rng, words.word, self.num_needles)
        values = words.distinct(rng, words.number(7), self.num_needles * self.num_values)
        values = [values[i * self.num_values:(i + 1) * self.num_values] for i in range(self.num_needles)]
        asked = rng.sample(range(self.num_needles), self.num_queries)
        one = self.num_values == 1
        inserts = []
        for i in [asked[0]] + [i for i in range(self.num_needles) if i != asked[0]]:
            for v in values[i]:
                text = f"The special magic number for {keys[i]} is {v}." if one else \
                       f"{v} is one of the special magic numbers for {keys[i]}."
                inserts.append((depth / 100 if not inserts else rng.random(), text))
        text, at = weave(sents, inserts)
        query = join([keys[i] for i in asked])
        if len(asked) * self.num_values == 1:
            question = f"What is the special magic number for {query} mentioned in the text above?"
            prefix = f"The special magic number for {query} mentioned in the provided text is"
        else:
            question = f"What are all the special magic numbers for {query} mentioned in the text above?"
            prefix = f"The special magic numbers for {query} mentioned in the provided text are"
        prompt = ("Some special magic numbers are hidden in the text below. Memorize them; "
                  f"you will be asked about them afterwards.\n\n{text}\n\n{question}")
        meta = {"needle_char": at[0], "haystack_chars": len(text), "needle_chars": at,
                "keys": [keys[i] for i in asked], "other_keys": [k for i, k in enumerate(keys) if i not in asked],
                "filler": SOURCE[self.haystack]}
        return Draft(prompt, prefix, [v for i in asked for v in values[i]], meta)


@dataclass(frozen=True)
class NiahSingle(NIAH):
    name = "niah_single"
    max_new_tokens = 32


@dataclass(frozen=True)
class NiahMultikey(NIAH):
    name = "niah_multikey"
    max_new_tokens = 64
    num_needles: int = 4


@dataclass(frozen=True)
class NiahMultivalue(NIAH):
    name = "niah_multivalue"
    max_new_tokens = 64
    num_values: int = 4


@dataclass(frozen=True)
class NiahMultiquery(NIAH):
    name = "niah_multiquery"
    max_new_tokens = 128
    num_needles: int = 4
    num_queries: int = 4
