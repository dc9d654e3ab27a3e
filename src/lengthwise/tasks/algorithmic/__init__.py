"""Algorithmic tasks for the length-generalization lab: seeded generators, exact match, plain-Python solvers.

    task = get_task("addition:reverse=true")
    s = task.sample(n=20, seed=0)            # prompt and answer as vocabulary symbols
    enc = s.encode()                         # <s> prompt <sep> answer </s>, ids and the answer's start

Length is the task's own size (letters, digits, bits, terms): what the PE study calls the instance length.
"""
from __future__ import annotations

from ... import options
from .base import AlgoTask, Sample
from .generators import (Addition, BucketSort, Copy, Count, DuplicateString, Mode, OddsFirst, Parity, Reverse,
                         SelectiveCopy, Sort)

TASKS: dict[str, type[AlgoTask]] = {t.name: t for t in [
    Copy, Reverse, Addition, Sort, Parity, Count, Mode, SelectiveCopy, DuplicateString, OddsFirst, BucketSort]}


def get_task(spec: "str | AlgoTask") -> AlgoTask:
    """A task from "name" or "name:option=value,...", e.g. "addition:reverse=true,hints=true"."""
    if isinstance(spec, AlgoTask):
        return spec
    return options.parse(spec, TASKS, "algorithmic task")


__all__ = ["TASKS", "get_task", "AlgoTask", "Sample"]
