"""ThinK (Xu et al., "ThinK: Thinner Key Cache by Query-Driven Pruning", ICLR 2025).

Prunes key channels, not tokens. At the end of the context, per (sequence, kv head), each channel c of the
head dimension scores mean over the last `window` queries of q_c^2 (averaged over the kv head's query group)
times mean over the cached keys of k_c^2 (RoPE applied to both, as kvpress's ThinKPress does); the lowest
int(D * 2 * ratio) channels go. The cache then stores the context's keys with only the kept channels for real
(the layer's key pool is rebuilt at the smaller width, kv/cache.py: RaggedKVCache.prune_keys); keys written
later (the question, decode steps) stay whole, as in kvpress, their other channels in a side pool. Attention
sees the context's pruned channels as zero: the scores of kvpress's zeroed channels. Values stay whole.

`ratio` counts as kvpress's ThinKPress.compression_ratio does: the share of the context's cache bytes removed,
half of the key channels removed (ratio=0.25 prunes half the key channels), so 0 <= ratio < 0.5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .policy import Policy


@dataclass(frozen=True)
class ThinK(Policy):
    name: ClassVar[str] = "think"
    chunked: ClassVar[bool] = False  # the channels are chosen once, over the whole context: no prefill chunks
    ratio: float = -1.0  # the share of the cache's bytes removed: key channels removed / 2 (kvpress)
    window: int = 32  # the last queries of the context whose magnitudes score the channels

    def check(self) -> None:
        if self.ratio == -1:
            raise LengthwiseError("think: give ratio=R, the share of the cache removed (key channels removed / 2, "
                                  "as kvpress counts ThinK), 0 <= R < 0.5")
        if not 0 <= self.ratio < 0.5:
            raise LengthwiseError(f"think: ratio must be in [0, 0.5) (it prunes 2 x ratio of the key channels), "
                                  f"got {self.ratio:g}")
        if self.window < 1:
            raise LengthwiseError(f"think: window must be >= 1, got {self.window}")
        if self.every:
            raise LengthwiseError("think: prunes key channels once, at the end of the context: drop every")

    @property
    def evicts(self) -> bool:
        return self.ratio > 0  # ratio=0: nothing removed, the cache is the full one

    @property
    def observe(self) -> int:
        return self.window

    def keep(self, n: torch.Tensor) -> torch.Tensor:
        return n  # every token stays

    def pruned(self, head_dim: int) -> int:
        """Key channels removed of a head_dim-wide head: int(head_dim * 2 * ratio), kvpress's count."""
        return int(head_dim * 2 * self.ratio)

    def check_head_dim(self, head_dim: int) -> None:
        """A head too narrow for this ratio to remove a whole channel is a one-line error, not a silent no-op."""
        if self.evicts and self.pruned(head_dim) == 0:
            raise LengthwiseError(f"think: ratio={self.ratio:g} removes int({head_dim} x 2 x {self.ratio:g}) = 0 of "
                                  f"this model's {head_dim} key channels: use ratio >= {_up(1 / (2 * head_dim))}")

    def channels(self, queries: torch.Tensor, ok: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """queries [B, w, H, D] (ok [B, w]: rows that exist), keys [B, S, Hkv, D] (valid [B, S]) -> the kept
        channels [B, Hkv, D - pruned], ascending."""
        B, w, H, D = queries.shape
        Hkv = keys.shape[2]
        q2 = (queries.float() ** 2 * ok[..., None, None]).sum(1) / ok.sum(1).clamp(min=1)[:, None, None]  # [B, H, D]
        q2 = q2.view(B, Hkv, H // Hkv, D).mean(2)  # [B, Hkv, D]
        k2 = (keys.float() ** 2 * valid[..., None, None]).sum(1) / valid.sum(1).clamp(min=1)[:, None, None]
        score = q2 * k2  # [B, Hkv, D]
        # kvpress removes the `pruned` lowest (topk, largest=False); keeping the rest, in channel order
        drop = score.topk(self.pruned(D), dim=-1, largest=False).indices
        keep = torch.ones_like(score, dtype=torch.bool).scatter_(-1, drop, False)
        return keep.nonzero()[:, 2].view(B, Hkv, D - self.pruned(D))

    def _unused(self) -> set:
        return set()


def _up(x: float) -> str:
    """x written with 4 significant digits, rounded up, so that the printed bound itself passes the check."""
    e = math.floor(math.log10(abs(x))) - 3
    return f"{math.ceil(x / 10 ** e - 1e-9) * 10 ** e:.4g}"
