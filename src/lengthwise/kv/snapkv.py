"""SnapKV (Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", NeurIPS 2024).

The last `window` queries of the prompt (the observation window) say which earlier tokens matter: their
attention weights, averaged over the window and over each kv head's query group, then smoothed along the keys
by an average pool of `kernel` tokens so that neighbours of an important token stay too. The window's own
tokens are always kept, so a ratio's budget never falls below the window (a prompt shorter than the window
stays whole; kvpress refuses one). kvpress's `snapkv` press scores the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..errors import LengthwiseError
from .policy import Budget


def snap_scores(c, window: int, kernel: int) -> torch.Tensor:
    """[B, Hkv, S]: SnapKV's pooled window attention, the window's tokens first."""
    att = c.per_kv_head(c.weights.mean(2))  # [B, Hkv, S]
    att = att.masked_fill(~c.valid[:, None, :], 0.0)
    B, Hkv, S = att.shape
    pooled = F.avg_pool1d(att.reshape(B * Hkv, 1, S), kernel, stride=1, padding=kernel // 2,
                          count_include_pad=False).view(B, Hkv, S)
    return torch.where(c.newest(torch.full((B,), window, device=att.device)), torch.inf, pooled)


@dataclass(frozen=True)
class SnapKV(Budget):
    name: ClassVar[str] = "snapkv"
    window: int = 64
    kernel: int = 5

    @property
    def observe(self) -> int:
        return self.window

    def check(self) -> None:
        super().check()
        if self.window < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise LengthwiseError(f"{self.name}: window must be >= 1 and kernel an odd number >= 1, got "
                                  f"window={self.window}, kernel={self.kernel}")
        if self.tokens and self.tokens < self.window:
            raise LengthwiseError(f"{self.name}: a budget of tokens={self.tokens} is below its observation window "
                                  f"(window={self.window}, always kept): raise tokens or lower window")

    def keep(self, n: torch.Tensor) -> torch.Tensor:
        """The ratio's budget, but never below the observation window, which SnapKV always keeps: a prompt of at
        most `window` tokens stays whole (kvpress refuses one), and a short one keeps its window, not part of it."""
        k = super().keep(n)
        return k if self.ratio == -1 else torch.maximum(k, n.clamp(max=self.window))

    def score(self, c):
        return snap_scores(c, self.window, self.kernel)
