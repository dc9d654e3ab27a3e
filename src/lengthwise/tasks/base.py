"""What every task shares: the Sample it builds, the Task base class, and the length search.

A task draws its content from a string-seeded `random.Random` and writes its text around n filler units
(words, noise sentences, list entries). `fit` finds the n whose render is within 2% of the target length,
measured in the evaluated model's own tokens through `render(prompt, answer_prefix)`.

A cell within the model's trained context stays within it, answer included, as RULER sizes its inputs: where
the 2% window would let prompt plus answer pass the context, the prompt is cut to fit (`Task.ceiling`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from ..errors import LengthwiseError
from ..options import check_fields
from .scoring import recall

Render = Callable[[str, str], list[int]]  # render(prompt, answer_prefix) -> the token ids the model will see

TOLERANCE = 0.02  # |n_tokens - length| <= TOLERANCE * length
MAX_RENDERS = 15
GOOD_ENOUGH = 6  # renders after which any length within the tolerance will do


@dataclass(frozen=True)
class Sample:
    task: str  # registry name, e.g. "niah_single"
    options: dict  # task options used, e.g. {"haystack": "noise"}
    prompt: str  # instructions + haystack + question, no chat template
    answer_prefix: str  # the answer starts with it; the runner appends it after the prompt or assistant header
    answers: tuple[str, ...]  # expected values
    length: int  # target length in tokens
    depth: float  # 0..100, where the key sits
    seed: int
    max_new_tokens: int
    n_tokens: int  # len(render(prompt, answer_prefix)) as built
    meta: dict  # anything else (needle positions, distractors, ...)


@dataclass
class Draft:
    """One build of a task at a given number of filler units, before its length is known."""
    prompt: str
    answer_prefix: str
    answers: list[str]
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """Base class: subclasses are small frozen dataclasses whose fields are the task's options."""
    name: ClassVar[str] = ""
    max_new_tokens: ClassVar[int] = 32
    positional: ClassVar[bool] = True  # a key sits at the cell's depth; False: depth only reseeds the prompt

    def __post_init__(self):
        check_fields(self, f"task {self.name}", coerce=True, finite=False)  # ranges: each task's own check
        self.check()

    def check(self) -> None:
        """Raise LengthwiseError for option values out of range."""

    def options(self) -> dict:
        return dataclasses.asdict(self)

    def unit_tokens(self, length: int) -> float:
        """A first guess at tokens per filler unit (here an essay word); fit() then measures it."""
        return 1.4

    def min_units(self, length: int) -> int:
        """The fewest filler units with which the task is well posed."""
        return 0

    def ceiling(self, length: int, context: int | None) -> int | None:
        """The most prompt tokens a cell of this length may take on a model trained to `context` tokens: a cell
        within the context keeps its prompt and answer inside it. None where the 2% window cannot pass it."""
        if context is None or length > context:
            return None
        top = context - self.max_new_tokens
        return top if length * (1 + TOLERANCE) > top else None

    def build(self, rng: random.Random, n: int, length: int, depth: float) -> Draft:
        """The task's text around n filler units; draws from rng in an order that does not depend on n."""
        raise NotImplementedError

    def make(self, render: Render, length: int, depth: float, seed: int, context: int | None = None) -> Sample:
        """One seeded input of `length` tokens (±2%) with its key at `depth`; context: the model's trained
        context, which a cell within it never passes, answer included (see ceiling). A cut prompt is within 2%
        below context - max_new_tokens, RULER's input size, where that is shorter than the length."""
        if not isinstance(depth, (int, float)) or isinstance(depth, bool) or not 0 <= depth <= 100:
            raise LengthwiseError(f"task {self.name}: depth must be a number within 0..100, got {depth!r}")
        if not isinstance(length, (int, float)) or isinstance(length, bool) or not math.isfinite(length) \
                or int(length) != length or length < 1:
            raise LengthwiseError(f"task {self.name}: length must be a positive integer, got {length!r}")
        length, depth = int(length), float(depth)
        key = f"{self.name}-{length}-{depth}-{seed}-{json.dumps(self.options(), sort_keys=True)}"
        drafts: dict[int, tuple[Draft, int]] = {}

        def measure(n: int) -> int:
            d = self.build(random.Random(key), n, length, depth)
            drafts[n] = d, len(render(d.prompt, d.answer_prefix))
            return drafts[n][1]

        top = self.ceiling(length, context)
        n = fit(measure, length, self.min_units(length), self.unit_tokens(length), self.name, top)
        d, n_tokens = drafts[n]
        goal = length if top is None else min(length, top)
        if abs(n_tokens - goal) > TOLERANCE * goal or (top is not None and n_tokens > top):  # fit() guarantees it
            raise LengthwiseError(f"task {self.name}: built {n_tokens} tokens for a target of {goal}")
        return Sample(self.name, self.options(), d.prompt, d.answer_prefix, tuple(d.answers), length, depth, seed,
                      self.max_new_tokens, n_tokens, {"units": n, "renders": len(drafts), **d.meta})

    def score(self, output: str, sample: Sample) -> float:
        """Recall of the expected answers: 0/1 for single-answer tasks."""
        return recall(output, sample.answers)


def fit(measure: Callable[[int], int], length: int, lo: int, unit_tokens: float, task: str,
        top: int | None = None) -> int:
    """The number of units n >= lo whose measure(n) (growing with n) is closest to length, within TOLERANCE;
    with top, no more than top tokens: the most units that fit when the closest does not, within TOLERANCE of
    min(length, top).

    Secant steps on the measured tokens per unit, kept inside a bracket, with bisection as the fallback.
    It aims at a quarter of the tolerance, and settles for the tolerance after GOOD_ENOUGH renders:
    typically 3-4 renders in all. A cut to top takes 1-9 more, 3 for most (_cut).
    """
    tol = TOLERANCE * length
    seen: dict[int, int] = {}

    def m(n: int) -> int:
        if n not in seen:
            seen[n] = measure(n)
        return seen[n]

    t_lo = m(lo)
    if t_lo > (length + tol if top is None else min(top, length + tol)):
        room = "" if top is None else f" (with its answer, at most {top} within the trained context)"
        raise LengthwiseError(f"task {task}: length {length}{room} is too small; its fixed parts already take {t_lo} tokens")
    if abs(t_lo - length) <= tol / 4:
        return lo
    base, hi, n = lo, None, lo + max(1, round((length - t_lo) / unit_tokens))
    for _ in range(2 * MAX_RENDERS):  # bounded even if measure were not monotone
        if len(seen) >= MAX_RENDERS:
            break
        t = m(n)
        if abs(t - length) <= tol / 4 or (abs(t - length) <= tol and len(seen) >= GOOD_ENOUGH):
            break
        lo, hi = (n, hi) if t < length else (lo, n)
        nxt = n + round((length - t) / max((t - seen[base]) / (n - base), 1e-3))
        if hi is None:
            nxt = max(nxt, lo + 1)
        elif hi - lo <= 1:
            break
        elif not lo < nxt < hi or nxt in seen:
            nxt = (lo + hi) // 2
        n = nxt
    best = min(seen, key=lambda k: abs(seen[k] - length))
    if top is not None and seen[best] > top:
        best = _cut(m, seen, top)
    goal = length if top is None else min(length, top)
    if abs(seen[best] - goal) > TOLERANCE * goal:
        what = (f"{length} tokens ±2%" if goal == length
                else f"a prompt within 2% below {goal} tokens (the trained context less the answer)")
        raise LengthwiseError(f"task {task}: no filler amount gives {what} "
                              f"(closest: {seen[best]} tokens with {best} units, after {len(seen)} renders)")
    return best


def _cut(m: Callable[[int], int], seen: dict[int, int], top: int) -> int:
    """The most units whose measure fits in top tokens, between the most measured units that fit (the fewest units
    always do: fit checked) and the fewest measured above them that do not. Secant steps inside that bracket, and
    bisection whenever a step fails to halve it: a measured count that fits, in O(log) renders."""
    good = max(k for k, t in seen.items() if t <= top)
    bad = min(k for k, t in seen.items() if k > good)  # seen[bad] > top, by the choice of good
    halve = False
    while bad - good > 1:
        width = bad - good
        guess = good + int((top - seen[good]) * width / max(seen[bad] - seen[good], 1))
        k = (good + bad) // 2 if halve or not good < guess < bad else guess
        if m(k) <= top:
            good = k
        else:
            bad = k
        halve = bad - good > width / 2
    return good
