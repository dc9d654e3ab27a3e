"""NTK-aware scaling (bloc97, 2023; analysed in the YaRN paper, Peng et al., 2023).

Raise the RoPE base to base * factor^(d/(d-2)): low frequencies stretch by about `factor`, while the
highest frequency, which carries local order, stays as trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .rope import RoPE, at_least_one, default_inv_freq


@dataclass(frozen=True)
class NTK(RoPE):
    name: ClassVar[str] = "ntk"
    factor: float = 4.0

    def check(self, trained):
        at_least_one("factor", self.factor, self.name)

    def inv_freq(self, head_dim, base, trained):
        return default_inv_freq(head_dim, base * self.factor ** (head_dim / (head_dim - 2)))  # [D/2]

    def reach(self, trained):
        return int(trained * self.factor)
