"""Random eviction: the floor every scoring method must beat (kvpress's `random` press).

Each (sequence, kv head) keeps a uniformly random subset of the budget's size, drawn from `seed` and the layer,
so a run repeats exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .policy import Budget


@dataclass(frozen=True)
class Random(Budget):
    name: ClassVar[str] = "random"
    seed: int = 0

    def score(self, c):
        B, S, Hkv = c.positions.shape
        g = torch.Generator(device=c.keys.device)
        g.manual_seed(self.seed * 1_000_003 + c.layer)
        return torch.rand(B, Hkv, S, generator=g, device=c.keys.device)
