"""PyramidKV (Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling", 2024).

SnapKV's scores with a budget per layer: lower layers spread their attention and keep more, upper layers
focus and keep less, in a straight line whose mean is the overall budget. With an average budget b per
sequence (b = n * (1 - ratio)), the top layer keeps b / beta and the bottom 2b - b / beta, clamped to the
prompt less the window, as in KVCache-Factory and kvpress's `pyramidkv`; where the pyramid cannot fit it
falls back to b everywhere (SnapKV). Each layer's pool is sized to its own budgets (kv/cache.py), so the
bytes follow the pyramid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .snapkv import SnapKV


@dataclass(frozen=True)
class PyramidKV(SnapKV):
    name: ClassVar[str] = "pyramidkv"
    beta: float = 20.0

    def check(self) -> None:
        super().check()
        if not self.beta >= 1:
            raise LengthwiseError(f"pyramidkv: beta must be >= 1 (the top layer keeps the budget / beta), got {self.beta:g}")

    def layer_keep(self, n: torch.Tensor, n_layers: int) -> torch.Tensor:
        flat = self.keep(n)  # [B]
        if n_layers < 2:
            return flat[None, :]
        b = flat.double()
        lo = b / self.beta
        hi = 2 * b - lo
        room = (n - self.window).double()
        clamp = hi >= room
        hi = torch.where(clamp, room, hi)
        lo = torch.where(clamp, 2 * b - room, lo)
        fits = (n.double() >= hi) & (hi >= lo) & (lo >= self.window)
        steps = (hi - lo) / (n_layers - 1)
        layers = torch.arange(n_layers, dtype=torch.float64, device=n.device)[:, None]
        pyramid = torch.round(hi[None, :] - layers * steps[None, :]).long()
        return torch.where(fits[None, :], pyramid, flat[None, :]).clamp(min=1).minimum(n[None, :])
