"""Sinks + recent window (Xiao et al., "Efficient Streaming Language Models with Attention Sinks", 2023).

Keep the first `sinks` tokens, which soak up attention mass, and the `recent` newest; drop the middle. Tokens
keep their true positions (RoPE was applied when they were written), so this is the window as a mask, made real.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .policy import Policy


@dataclass(frozen=True)
class Window(Policy):
    name: ClassVar[str] = "window"
    sinks: int = 4
    recent: int = 1024
    every: int = field(default=1, kw_only=True)  # decode: evict after every step, so the cache never holds more than sinks + recent + 1

    def check(self) -> None:
        if self.sinks < 0 or self.recent < 1:
            raise LengthwiseError(f"window: sinks must be >= 0 and recent >= 1, got sinks={self.sinks}, recent={self.recent}")

    def keep(self, n: torch.Tensor) -> torch.Tensor:
        return n.clamp(max=self.sinks + self.recent)

    def score(self, c):
        """The sinks first, then newest first."""
        p = c.positions.transpose(1, 2).double()
        return torch.where(p < self.sinks, torch.inf, p)
