"""Common words extraction, RULER's aggregation task CWE (Hsieh et al., "RULER", 2024).

A numbered list repeats a few words many times and the rest rarely; name the most common ones.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import LengthwiseError
from . import words
from .base import Draft, Task


@dataclass(frozen=True)
class CommonWords(Task):
    """Words are adjective-noun pairs (enough of them for 128k tokens). Frequencies 0 mean RULER's
    defaults: 6 and 1 below 4096 tokens, 30 and 3 from there on. `depth` is not used (no single key)."""
    name = "common_words"
    max_new_tokens = 120
    positional = False  # aggregation over the whole context: no key, no depth
    num_common: int = 10
    freq_common: int = 0
    freq_uncommon: int = 0

    def check(self):
        if self.num_common < 1 or self.freq_common < 0 or self.freq_uncommon < 0:
            raise LengthwiseError(f"task {self.name}: num_common must be >= 1 and frequencies >= 0")

    def freqs(self, length: int) -> tuple[int, int]:
        fc = self.freq_common or (6 if length < 4096 else 30)
        fu = self.freq_uncommon or (1 if length < 4096 else 3)
        if fc <= fu:
            raise LengthwiseError(f"task {self.name}: freq_common ({fc}) must exceed freq_uncommon ({fu})")
        return fc, fu

    def unit_tokens(self, length: int) -> float:
        return 8.0 * self.freqs(length)[1]  # an uncommon word's entries

    def build(self, rng: random.Random, n: int, length: int, depth: float) -> Draft:
        fc, fu = self.freqs(length)
        if self.num_common + n > words.N_WORDS:
            raise LengthwiseError(f"task {self.name}: length {length} needs more distinct words than the "
                                  f"{words.N_WORDS} available")
        vocab = words.distinct(rng, words.word, self.num_common + n)  # n = number of uncommon words
        common = vocab[: self.num_common]
        entries = common * fc + vocab[self.num_common:] * fu
        rng.shuffle(entries)
        text = " ".join(f"{i + 1}. {w}" for i, w in enumerate(entries))
        prompt = ("Below is a numbered list of words. Some words occur many times in it, the others only a few times. "
                  f"Keep track of which words occur most often.\n\n{text}\n\n"
                  f"Question: which {self.num_common} words occur most often in the list above?")
        prefix = f"The {self.num_common} words that occur most often in the list are:"
        return Draft(prompt, prefix, common, {"freq_common": fc, "freq_uncommon": fu, "entries": len(entries)})
