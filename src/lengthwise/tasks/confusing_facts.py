"""Confusing facts (after LV-Eval, Yuan et al., 2024): the true fact hides among near-miss statements,
similar keys or phrasings with other values; credit only when the true value and no distractor is given.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import LengthwiseError
from . import words
from .base import Draft, Sample, Task
from .filler import SOURCE, haystack, weave
from .scoring import contains

# Near misses, in turn: another adjective, another noun, a superseded value, a retracted claim.
DISTRACTORS = (
    "The archive number of the {other_adj} project is {v}.",
    "The archive number of the {other_noun} project is {v}.",
    "Before it was renumbered, the archive number of the {key} project was {v}.",
    "A draft once claimed that the archive number of the {key} project is {v}, but that was a mistake.",
)


@dataclass(frozen=True)
class ConfusingFacts(Task):
    """Keys are adjective-noun names. The true fact sits at `depth`, distractors at uniform random places."""
    name = "confusing_facts"
    max_new_tokens = 32
    num_distractors: int = 4

    def check(self):
        most = min(len(words.ADJECTIVES), len(words.NOUNS)) - 1  # each near miss needs a fresh adjective and noun
        if not 0 <= self.num_distractors <= most:
            raise LengthwiseError(f"task {self.name}: num_distractors must be within 0..{most}")

    def build(self, rng: random.Random, n: int, length: int, depth: float) -> Draft:
        sents = haystack("essay", rng, n)
        key = words.word(rng)
        adj, noun = key.split("-")
        values = words.distinct(rng, words.number(7), 1 + self.num_distractors)
        adjs = words.distinct(rng, lambda r: r.choice(words.ADJECTIVES), self.num_distractors, avoid=[adj])
        nouns = words.distinct(rng, lambda r: r.choice(words.NOUNS), self.num_distractors, avoid=[noun])
        inserts = [(depth / 100, f"The archive number of the {key} project is {values[0]}.")]
        for i, v in enumerate(values[1:]):
            near = DISTRACTORS[i % len(DISTRACTORS)].format(
                key=key, other_adj=f"{adjs[i]}-{noun}", other_noun=f"{adj}-{nouns[i]}", v=v)
            inserts.append((rng.random(), near))
        text, at = weave(sents, inserts)
        prompt = ("The text below mentions archive numbers of several projects. Some statements look alike but "
                  "name another project, give a number that is no longer valid, or were retracted. Read carefully."
                  f"\n\n{text}\n\nQuestion: what is the current archive number of the {key} project?")
        prefix = f"The current archive number of the {key} project is"
        return Draft(prompt, prefix, [values[0]], {"needle_char": at[0], "haystack_chars": len(text),
                                                  "distractors": values[1:], "filler": SOURCE["essay"]})

    def score(self, output: str, sample: Sample) -> float:
        """1 only if the true value appears and no distractor value does."""
        return float(contains(output, sample.answers[0])
                     and not any(contains(output, v) for v in sample.meta["distractors"]))
