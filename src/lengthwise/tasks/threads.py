"""Needle threading (Roberts et al., "Needle Threading: Can LLMs Follow Threads through Near-Million-Scale
Haystacks?", 2024): key-value records where a value is the next key; follow the thread to its end.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import LengthwiseError
from . import words
from .base import Draft, Task
from .filler import SOURCE, haystack, weave


@dataclass(frozen=True)
class Threads(Task):
    """Hex keys in essay filler. The thread's first record sits at `depth`; its other records and the
    unrelated distractor records at uniform random places (so a thread may run backwards)."""
    name = "threads"
    max_new_tokens = 32
    num_hops: int = 4  # records in the thread
    num_distractors: int = 6  # records outside it

    def check(self):
        if self.num_hops < 1 or self.num_distractors < 0:
            raise LengthwiseError(f"task {self.name}: num_hops must be >= 1 and num_distractors >= 0")

    def build(self, rng: random.Random, n: int, length: int, depth: float) -> Draft:
        sents = haystack("essay", rng, n)
        keys = words.distinct(rng, words.hex_key, self.num_hops + 1 + 2 * self.num_distractors)
        thread, other = keys[: self.num_hops + 1], keys[self.num_hops + 1:]
        pairs = list(zip(thread, thread[1:])) + list(zip(other[::2], other[1::2]))
        inserts = [(depth / 100 if i == 0 else rng.random(), f"The value stored under key {k} is {v}.")
                   for i, (k, v) in enumerate(pairs)]
        text, at = weave(sents, inserts)
        prompt = ("The text below hides records of the form \"The value stored under key K is V.\" A value can "
                  "itself be the key of another record, which makes a thread. To follow a thread, look up the value "
                  "of its first key, then use that value as the next key, and so on, until you reach a value that "
                  f"is not the key of any record.\n\n{text}\n\n"
                  f"Question: what is the final value of the thread that starts at key {thread[0]}?")
        prefix = f"The final value of the thread that starts at key {thread[0]} is"
        return Draft(prompt, prefix, [thread[-1]], {"needle_char": at[0], "haystack_chars": len(text),
                                                   "thread": thread, "filler": SOURCE["essay"]})
