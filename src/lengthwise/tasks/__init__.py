"""Long-context tasks: seeded generators that build a prompt of a target length in the model's own tokens,
with the key at a chosen depth, plus a scorer.

    task = get_task("niah_single:haystack=noise")
    sample = task.make(render, length=4096, depth=50, seed=0)   # render(prompt, answer_prefix) -> ids
    task.score(model_output, sample)                            # 0..1
"""
from __future__ import annotations

from .. import options
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


def get_task(spec: str) -> Task:
    """A task from "name" or "name:option=value,option=value", each value read as its option's type."""
    return options.parse(spec, TASKS, "task")


__all__ = ["TASKS", "get_task", "Task", "Sample", "Render"]
