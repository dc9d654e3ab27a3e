"""Passkey retrieval (Mohtashami & Jaggi, "Landmark Attention", 2023).

A five-digit pass key sits at `depth` inside repeated noise sentences; the model must repeat it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from . import words
from .base import Draft, Task
from .filler import SOURCE, haystack, weave


@dataclass(frozen=True)
class Passkey(Task):
    name = "passkey"
    max_new_tokens = 16

    def unit_tokens(self, length: int) -> float:
        return 5.0  # one noise sentence

    def build(self, rng: random.Random, n: int, length: int, depth: float) -> Draft:
        sents = haystack("noise", rng, n)
        key = words.number(5)(rng)
        needle = f"The pass key is {key}. Keep it in mind: {key} is the pass key."
        text, (at,) = weave(sents, [(depth / 100, needle)])
        # "Answer with the number only" took SmolLM2-135M from 80% to 100% at 1k, base and chat alike
        prompt = ("A lot of irrelevant text follows, and one important piece of information is hidden inside it. "
                  f"Find it and memorize it; I will quiz you about it afterwards.\n\n{text}\n\n"
                  "What is the pass key? Answer with the number only.")
        return Draft(prompt, "The pass key is", [key],
                     {"needle_char": at, "haystack_chars": len(text), "filler": SOURCE["noise"]})
