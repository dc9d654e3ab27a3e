"""Giraffe's truncated basis (Pal et al., 2023, "Giraffe: Adventures in Expanding Context Lengths in LLMs").

With b = 2 pi / T (one turn over T tokens): frequencies >= b stay, those in [b/8, b) become the
constant rho = b/16, and slower ones become 0, so rotations never seen through a full turn in
training stop carrying position. `factor` > 1 first divides every frequency (linear scaling), as
the authors' code allows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .rope import UNBOUNDED, RoPE, default_inv_freq


@dataclass(frozen=True)
class Giraffe(RoPE):
    name: ClassVar[str] = "giraffe"
    truncate: int = 0  # T, the length whose single turn sets b; 0: the trained length
    factor: float = 1.0  # linear scaling applied before truncation

    def check(self, trained):
        if self.truncate < 0:
            raise LengthwiseError(f"giraffe: truncate must be >= 1 (0 means the trained length), got {self.truncate}")
        if not self.factor > 0:
            raise LengthwiseError(f"giraffe: factor must be > 0, got {self.factor:g}")

    def inv_freq(self, head_dim, base, trained):
        inv = default_inv_freq(head_dim, base) / self.factor  # [D/2]
        b = 2 * math.pi / (self.truncate or trained)
        a, rho = b / 8, b / 16
        return torch.where(inv >= b, inv, torch.where(inv >= a, torch.full_like(inv, rho), torch.zeros_like(inv)))

    def reach(self, trained):
        return UNBOUNDED  # every kept rotation has turned fully within the trained length
