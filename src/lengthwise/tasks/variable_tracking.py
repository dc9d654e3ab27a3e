"""Variable tracking, RULER's multi-hop tracing task (Hsieh et al., "RULER", 2024).

Chains "VAR A = 12345", "VAR B = VAR A", ... hide in noise; name every variable that ends up holding the value.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import LengthwiseError
from . import words
from .base import Draft, Task
from .filler import SOURCE, haystack, weave


@dataclass(frozen=True)
class VariableTracking(Task):
    """The queried chain's first assignment sits at `depth`, its hops at random places after it, in order;
    the other chains at random places, each in order."""
    name = "variable_tracking"
    max_new_tokens = 32
    num_chains: int = 1
    num_hops: int = 4

    def unit_tokens(self, length: int) -> float:
        return 5.0  # one noise sentence

    def check(self):
        if self.num_chains < 1 or self.num_hops < 1:
            raise LengthwiseError(f"task {self.name}: num_chains and num_hops must be >= 1")

    def build(self, rng: random.Random, n: int, length: int, depth: float) -> Draft:
        sents = haystack("noise", rng, n)
        names = words.distinct(rng, words.letters(5), self.num_chains * (self.num_hops + 1))
        values = words.distinct(rng, words.number(5), self.num_chains)
        inserts = []
        for c in range(self.num_chains):
            chain = names[c * (self.num_hops + 1):(c + 1) * (self.num_hops + 1)]
            lines = [f"VAR {chain[0]} = {values[c]}."] + [f"VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:])]
            start = depth / 100 if c == 0 else rng.random()
            rest = sorted(rng.uniform(start, 1) if c == 0 else rng.random() for _ in lines[1:])
            fracs = [start] + rest if c == 0 else sorted([start] + rest)
            inserts += list(zip(fracs, lines))
        text, at = weave(sents, inserts)
        answers = names[: self.num_hops + 1]
        prompt = ("Keep track of the chains of variable assignments hidden in the text below.\n\n"
                  f"{text}\n\nQuestion: which variables are assigned the value {values[0]} in the text above?")
        prefix = (f"Following the chains of assignments in the text above, the {len(answers)} variables "
                  f"that hold the value {values[0]} are:")
        return Draft(prompt, prefix, answers, {"needle_char": at[0], "haystack_chars": len(text),
                                               "other_chains": names[len(answers):], "filler": SOURCE["noise"]})
