"""Dynamic NTK scaling (emozilla, 2023; HF rope_type "dynamic").

NTK-aware scaling whose strength follows the input: a sequence of length L > trained uses base
* (factor * L / trained - (factor - 1))^(d/(d-2)), and plain RoPE below the trained length. In a
packed batch every sequence is scaled by its own length, in prefill and at every decode step (keys
already cached keep the rotation they were written with, as in HF's generate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .rope import UNBOUNDED, RoPE, at_least_one, default_inv_freq, plain_table


@dataclass(frozen=True)
class DynamicNTK(RoPE):
    name: ClassVar[str] = "dynamic_ntk"
    factor: float = 4.0

    def per_length(self):
        return True

    def check(self, trained):
        at_least_one("factor", self.factor, self.name)

    def inv_freq(self, head_dim, base, trained):
        return default_inv_freq(head_dim, base)

    def inv_freq_at(self, seq_len, head_dim, base, trained):
        """seq_len [N] -> [N, D/2]; within the trained length plain RoPE's own table, bit for bit (as HF, which
        recomputes only past it: the formula at scale 1 rounds differently)."""
        L = torch.clamp(seq_len, min=trained).double()
        b = base * ((self.factor * L / trained) - (self.factor - 1)) ** (head_dim / (head_dim - 2))  # [N]
        expo = torch.arange(0, head_dim, 2, dtype=torch.int64, device=seq_len.device).float() / head_dim
        plain = plain_table(head_dim, float(base), str(seq_len.device))[None, :]
        return torch.where((seq_len > trained)[:, None], 1.0 / (b.float()[:, None] ** expo[None, :]), plain)

    def reach(self, trained):
        return UNBOUNDED  # the base grows with each sequence's length
