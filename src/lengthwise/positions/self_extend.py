"""SelfExtend (Jin et al., 2024, "LLM Maybe LongLM: Self-Extend LLM Context Window Without Tuning").

Neighbour keys (distance < window) are seen at their true distance; farther keys through grouped
positions: keys at pos // group, queries at pos // group + window - window // group, so distances
stay inside the trained range and are continuous at the window's edge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import LengthwiseError
from .rope import Remap


@dataclass(frozen=True)
class SelfExtend(Remap):
    name: ClassVar[str] = "self_extend"
    shown: ClassVar[tuple[str, ...]] = ("window",)
    group: int = 8
    window: int = 1024

    def check(self, trained):
        if self.group < 1 or self.window < 1:
            raise LengthwiseError(f"self_extend: group and window must be >= 1, got group={self.group}, window={self.window}")
        if self.window >= trained:
            raise LengthwiseError(f"self_extend: window={self.window} must be shorter than the {trained}-token "
                                  "trained context (neighbours are seen at their true distance)")

    def near_window(self, trained):
        return self.window

    def far_q(self, pos, trained):
        return pos // self.group + (self.window - self.window // self.group)

    def far_k(self, pos, trained):
        return pos // self.group

    def reach(self, trained):
        return (trained - self.window) * self.group + self.window
