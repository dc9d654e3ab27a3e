"""Random eviction: the floor every scoring method must beat (kvpress's `random` press).

Each (sequence, kv head) keeps a uniformly random subset of the budget's size. The draw is a hash of (seed,
layer, kv head, token position), not a generator's stream, so a run repeats exactly and a sequence keeps the same
tokens in any batch (packed equals alone), as every other policy does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .policy import Budget

_M = 2 ** 31 - 1


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer hash (xor-shift-multiply, as in Mueller's hash32): int64 in [0, 2^31) -> the same range."""
    for _ in range(2):
        x = x ^ (x >> 16)
        x = (x * 0x45D9F3B) & _M
    return x ^ (x >> 16)


@dataclass(frozen=True)
class Random(Budget):
    name: ClassVar[str] = "random"
    seed: int = 0

    def score(self, c):
        pos = c.positions.transpose(1, 2).long() & _M  # [B, Hkv, S]
        head = torch.arange(pos.shape[1], device=pos.device)[None, :, None]
        h = _mix(torch.full_like(pos, (self.seed * 1_000_003 + 12_345) & _M))
        h = _mix(h ^ c.layer)
        h = _mix(h ^ head)
        h = _mix(h ^ pos)
        return h.double() / _M
