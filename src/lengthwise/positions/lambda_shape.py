"""LM-Infinite's Lambda-shaped attention (Han et al., 2024, "LM-Infinite: Zero-Shot Extreme Length
Generalization for Large Language Models").

A query sees the first `n_global` tokens and the last `window` tokens (the two arms of the Lambda),
and every distance is capped at `cap`, so none leaves the trained range. As in the official code,
far keys are unrotated and far queries sit at min(pos, cap): with window = cap, every global key
outside the window is seen at distance exactly cap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .rope import UNBOUNDED, Remap


@dataclass(frozen=True)
class LambdaShape(Remap):
    name: ClassVar[str] = "lambda"
    n_global: int = 10
    window: int = 0  # 0: the trained length
    cap: int = 0  # 0: the trained length

    def check(self, trained):
        if self.n_global < 1 or self.window < 0 or self.cap < 0:
            raise LengthwiseError("lambda: need n_global >= 1, window >= 1 and cap >= 1 (0: the trained length)")
        for k in ("window", "cap"):
            if getattr(self, k) > trained:
                raise LengthwiseError(f"lambda: {k}={getattr(self, k)} is beyond the {trained}-token trained context")

    def near_window(self, trained):
        return self.window or trained

    def n_sinks(self):
        return self.n_global

    def far_q(self, pos, trained):
        return torch.clamp(pos, max=self.cap or trained)

    def far_k(self, pos, trained):
        return torch.zeros_like(pos)

    def reach(self, trained):
        return UNBOUNDED
