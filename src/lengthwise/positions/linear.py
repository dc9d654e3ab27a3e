"""Position Interpolation (Chen et al., 2023, "Extending Context Window of LLMs via Positional Interpolation").

Every position is divided by `factor`, so a `factor`-times longer input lands inside the trained range.
HF calls it rope_type "linear".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .rope import RoPE, at_least_one, default_inv_freq


@dataclass(frozen=True)
class Linear(RoPE):
    name: ClassVar[str] = "linear"
    factor: float = 4.0

    def check(self, trained):
        at_least_one("factor", self.factor, self.name)

    def inv_freq(self, head_dim, base, trained):
        return default_inv_freq(head_dim, base) / self.factor  # [D/2]

    def reach(self, trained):
        return int(trained * self.factor)
