"""Attention sinks plus a sliding window (Xiao et al., 2024, "Efficient Streaming Language Models with
Attention Sinks", StreamingLLM).

A query sees the first `sinks` tokens and the last `window` tokens. Positions are those inside the
rolling cache StreamingLLM keeps: the window at its true distances, the sinks at most
sinks + window - 1 back. Nothing between is seen, so memory of the middle is given up for stability.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .rope import UNBOUNDED, Remap


@dataclass(frozen=True)
class Sinks(Remap):
    name: ClassVar[str] = "sinks"
    sinks: int = 4
    window: int = 0  # 0: the trained length minus the sinks

    def _window(self, trained):
        return self.window or trained - self.sinks

    def check(self, trained):
        if self.sinks < 1 or self.window < 0:
            raise LengthwiseError(f"sinks: need sinks >= 1 and window >= 1 (or 0: the trained length minus the sinks), got sinks={self.sinks}, window={self.window}")
        if self._window(trained) < 1:
            raise LengthwiseError(f"sinks: sinks={self.sinks} leaves no window in the {trained}-token trained context")
        if self.sinks + self._window(trained) > trained:
            raise LengthwiseError(f"sinks: sinks + window = {self.sinks + self._window(trained)} is beyond the "
                                  f"{trained}-token trained context")

    def near_window(self, trained):
        return self._window(trained)

    def n_sinks(self):
        return self.sinks

    def plain_up_to(self, trained):
        # below sinks + window the far queries keep their positions and the sinks theirs: plain attention
        return self.sinks + self._window(trained)

    def far_q(self, pos, trained):
        return torch.clamp(pos, max=self.sinks + self._window(trained) - 1)

    def reach(self, trained):
        return UNBOUNDED
