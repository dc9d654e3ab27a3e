"""Frequent words extraction, RULER's aggregation task FWE (Hsieh et al., "RULER", 2024).

Coded words drawn from a Zipf distribution fill the text; name the three most frequent (dots excepted).
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass

from ..errors import LengthwiseError
from . import words
from .base import Draft, Task


@dataclass(frozen=True)
class FrequentWords(Task):
    """Word k of a vocabulary of length // 50 appears floor(n * k^-alpha / Z) times in n words; the top one is
    "..." (noise), the answer is ranks 2-4. `depth` is not used (no single key)."""
    positional = False  # aggregation over the whole context: no key, no depth
    name = "frequent_words"
    max_new_tokens = 50
    alpha: float = 2.0
    word_length: int = 6

    def check(self):
        # alpha > 1 for a Zipf law; up to 5, where ranks 1-5 need ~1k words to differ (it grows ~4^alpha)
        if not 1 < self.alpha <= 5 or self.word_length < 4:  # 26^4 coded words suffice for any length
            raise LengthwiseError(f"task {self.name}: alpha must be in (1, 5] and word_length >= 4, "
                                  f"got alpha={self.alpha:g}, word_length={self.word_length}")

    def unit_tokens(self, length: int) -> float:
        return 0.7 * self.word_length  # a coded word splits into short pieces

    def counts(self, n: int, length: int) -> list[int]:
        weights = [k ** -self.alpha for k in range(1, max(length // 50, 10) + 1)]
        z = sum(weights)
        return [int(n * w / z) for w in weights]

    def min_units(self, length: int) -> int:
        n = 1  # the fewest words for which ranks 1-5 have distinct counts, so the top 3 are well defined
        while True:
            c = self.counts(n, length)[:5]
            if all(a > b for a, b in zip(c, c[1:])):
                return n
            n += 1

    def build(self, rng: random.Random, n: int, length: int, depth: float) -> Draft:
        counts = self.counts(n, length)
        vocab = ["..."] + words.distinct(rng, words.letters(self.word_length, string.ascii_lowercase), len(counts) - 1)
        text = [w for w, c in zip(vocab, counts) for _ in range(c)]
        rng.shuffle(text)
        prompt = ("Read the coded text below and keep count of how often each coded word appears. "
                  f"Ignore the dots '...'.\n\n{' '.join(text)}\n\n"
                  "Question: what are the three most frequent coded words in the text above? Do not explain.")
        prefix = "The three most frequent coded words in the text above are:"
        return Draft(prompt, prefix, vocab[1:4], {"counts": counts[:5], "words": len(text)})
