"""A2SF (Jo & Shin, "A2SF: Accumulative Attention Scoring with Forgetting Factor for Token Pruning in
Transformer Decoder", 2024).

H2O's accumulated attention favours old tokens, which every later query has seen. A2SF multiplies the running
score by a forgetting factor for every token that passes, so a query d tokens before the newest counts
factor**d: recent attention weighs most. No recent window is reserved by default (`recent` as in h2o).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import LengthwiseError
from .h2o import H2O


@dataclass(frozen=True)
class A2SF(H2O):
    name: ClassVar[str] = "a2sf"
    recent: float = 0.0
    factor: float = 0.99

    def check(self) -> None:
        super().check()
        if not 0 < self.factor <= 1:
            raise LengthwiseError(f"a2sf: factor (the forgetting factor) must be in (0, 1], got {self.factor:g}")

    @property
    def decay(self) -> float:
        return self.factor
