"""H2O (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models",
NeurIPS 2023).

A token's score is the attention it has received, summed over every query so far: each prompt token's and
then each decoded token's (the cache keeps the running sum per token and kv head, averaged over the kv head's
query group). The budget is split between these heavy hitters and the newest tokens: `recent` is the share of
the budget kept for the newest (the paper's half and half is recent=0.5).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .policy import Budget


@dataclass(frozen=True)
class H2O(Budget):
    name: ClassVar[str] = "h2o"
    accumulate: ClassVar[bool] = True
    recent: float = 0.5

    def check(self) -> None:
        super().check()
        if not 0 <= self.recent < 1:
            raise LengthwiseError(f"{self.name}: recent is the share of the budget kept for the newest tokens, "
                                  f"in [0, 1), got {self.recent:g}")

    def score(self, c):
        newest = c.newest((c.budgets.double() * self.recent).floor().long())
        return torch.where(newest, torch.inf, c.attention)
