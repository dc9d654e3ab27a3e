"""Long-context tasks: seeded generators that build a prompt of a target length in the model's own tokens,
with the key at a chosen depth, plus a scorer.

    task = get_task("niah_single:haystack=noise")
    sample = task.make(render, length=4096, depth=50, seed=0)   # render(prompt, answer_prefix) -> ids
    task.score(model_output, sample)                            # 0..1
"""
from __future__ import annotations

import dataclasses

from ..errors import LengthwiseError
from .base import Render, Sample, Task
from .common_words import CommonWords
from .confusing_facts import ConfusingFacts
from .frequent_words import FrequentWords
from .niah import NiahMultikey, NiahMultiquery, NiahMultivalue, NiahSingle
from .passkey import Passkey
from .threads import Threads
from .variable_tracking import VariableTracking

TASKS: dict[str, type[Task]] = {t.name: t for t in [
    Passkey, NiahSingle, NiahMultikey, NiahMultivalue, NiahMultiquery, VariableTracking,
    CommonWords, FrequentWords, Threads, ConfusingFacts,
]}


def _value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def get_task(spec: str) -> Task:
    """A task from "name" or "name:option=value,option=value"; values are read as int, float or str."""
    if not isinstance(spec, str):
        raise LengthwiseError(f"a task is named by a string like 'passkey' or 'niah_single:haystack=noise', got {spec!r}")
    name, _, opts = spec.strip().partition(":")
    if name not in TASKS:
        raise LengthwiseError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    cls = TASKS[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if key not in valid:
            raise LengthwiseError(f"task {name} has no option {key!r}; valid options: {', '.join(valid) or 'none'}")
        if not eq:
            raise LengthwiseError(f"task {name}: option {key!r} needs a value, as in {key}=...")
        if key in kwargs:
            raise LengthwiseError(f"task {name}: option {key!r} is given twice: give each option once")
        kwargs[key] = _value(value)
    return cls(**kwargs)


__all__ = ["TASKS", "get_task", "Task", "Sample", "Render"]
