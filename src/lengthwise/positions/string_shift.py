"""STRING, shifted rotary positions (An et al., 2024, "Why Does the Effective Context Length of LLMs
Fall Short?").

Large distances are poorly trained, so they are overwritten by shifting well-trained ones: a distance
d >= shift is seen as d - shift + local, and smaller distances stay as they are. Far queries sit at
pos - shift + local; keys keep their positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import LengthwiseError
from .rope import Remap


@dataclass(frozen=True)
class STRING(Remap):
    name: ClassVar[str] = "string"
    shift: int = 0  # S; 0: int(0.33 * trained), the authors' default
    local: int = 128  # W, keeps the nearest shifted distances apart from the neighbours'

    def _shift(self, trained):
        return self.shift or int(0.33 * trained)

    def check(self, trained):
        if self.shift < 0 or self.local < 0:
            raise LengthwiseError(f"string: shift and local must be >= 0, got shift={self.shift}, local={self.local}")
        if self._shift(trained) >= trained:
            raise LengthwiseError(f"string: shift={self.shift} must be shorter than the {trained}-token trained context")
        if self.local >= self._shift(trained):
            raise LengthwiseError(f"string: local={self.local} must be smaller than shift={self._shift(trained)}")

    def near_window(self, trained):
        return self._shift(trained)

    def far_q(self, pos, trained):
        return pos - self._shift(trained) + self.local

    def reach(self, trained):
        return trained + self._shift(trained) - self.local
