"""LM-Infinite's distance cap (Han et al., 2024, "LM-Infinite: Zero-Shot Extreme Length Generalization
for Large Language Models"; also ReRoPE, Su, 2023).

Every query-key distance beyond `cap` is seen as exactly `cap`: no distance ever leaves the trained
range, and all keys stay visible. Far queries sit at position cap and far keys at 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .rope import UNBOUNDED, Remap


@dataclass(frozen=True)
class DistanceCap(Remap):
    name: ClassVar[str] = "distance_cap"
    cap: int = 0  # 0: the trained length

    def _cap(self, trained):
        return self.cap or trained

    def check(self, trained):
        if self.cap < 0:
            raise LengthwiseError(f"distance_cap: cap must be >= 1 (0 means the trained length), got {self.cap}")
        if self._cap(trained) > trained:
            raise LengthwiseError(f"distance_cap: cap={self.cap} is beyond the {trained}-token trained context: "
                                  "capped distances must be ones the model was trained on")

    def near_window(self, trained):
        return self._cap(trained)

    def far_q(self, pos, trained):
        return torch.full_like(pos, self._cap(trained))

    def far_k(self, pos, trained):
        return torch.zeros_like(pos)

    def reach(self, trained):
        return UNBOUNDED
