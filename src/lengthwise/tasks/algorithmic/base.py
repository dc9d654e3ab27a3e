"""What every algorithmic task shares: a seeded sample at a size n, an exact-match scorer and a solver.

A task is a small frozen dataclass whose fields are its options (parsed by `options.py`, as the long-context
tasks are). `build(rng, n)` draws one instance of size n (items to copy, digits to add, ...) and its answer;
`solve(prompt)` recomputes the answer from the prompt alone by a plain-Python method written apart from
`build`, so that tests check each generator against an independent solver.
"""
from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from typing import ClassVar

from ...errors import LengthwiseError
from ...options import check_fields
from .vocab import Encoded, encode

LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Sample:
    task: str
    n: int  # the size: what the lab calls the length
    seed: int
    prompt: tuple[str, ...]
    answer: tuple[str, ...]

    def encode(self) -> Encoded:
        return encode(list(self.prompt), list(self.answer))


@dataclass(frozen=True)
class AlgoTask:
    name: ClassVar[str] = ""
    size: ClassVar[str] = "items"  # what n counts, for messages
    min_length: ClassVar[int] = 1

    def __post_init__(self):
        check_fields(self, f"task {self.name}")
        self.check()

    def check(self) -> None:
        """Raise LengthwiseError for option values out of range."""

    def max_length(self) -> int | None:
        """The largest n the task can make, or None for no bound."""
        return None

    def spec(self) -> str:
        from ...options import spec_of
        return spec_of(self, self.name)

    def check_length(self, n: int) -> None:
        top = self.max_length()
        if not isinstance(n, int) or isinstance(n, bool) or n < self.min_length or (top is not None and n > top):
            span = f"{self.min_length}..{top}" if top is not None else f"at least {self.min_length}"
            raise LengthwiseError(f"task {self.spec()} cannot make length {n!r}: its length counts {self.size}, "
                                  f"{span}")

    def build(self, rng: random.Random, n: int) -> tuple[list[str], list[str]]:
        raise NotImplementedError

    def solve(self, prompt: list[str]) -> list[str]:
        raise NotImplementedError

    def sample(self, n: int, seed: int, stream: str = "eval") -> Sample:
        """One instance of size n; the same (task options, n, seed, stream) give the same sample.
        stream keeps training draws apart from evaluation draws."""
        self.check_length(n)
        key = f"{stream}-{self.name}-{json.dumps(dataclasses.asdict(self), sort_keys=True)}-{n}-{seed}"
        prompt, answer = self.build(random.Random(key), n)
        return Sample(self.name, n, seed, tuple(prompt), tuple(answer))

    def score(self, predicted: list[str], sample: Sample) -> float:
        """Exact match: 1.0 when the predicted answer is the answer, symbol for symbol."""
        return float(tuple(predicted) == sample.answer)
