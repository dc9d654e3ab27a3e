"""Mask patterns: which keys a query may see, stated once and honoured by every backend.

Distances are query position minus key position, with queries aligned to the end of their keys.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MaskPattern:
    causal: bool = True
    window: int | None = None  # a query sees keys at distance < window (HF's sliding_window meaning)

    def allowed(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """[Lq, Lk] bool, from q_pos [Lq] and k_pos [Lk]."""
        q, k = q_pos[:, None], k_pos[None, :]  # compared directly: no [Lq, Lk] distance matrix in int64
        ok = k <= q if self.causal else torch.ones(q.shape[0], k.shape[1], dtype=torch.bool, device=q_pos.device)
        if self.window is not None:
            ok = ok & (k > q - self.window)  # distance q - k < window
        return ok

    @property
    def flash_window(self) -> tuple[int, int]:
        """(left, right) in FlashAttention's terms; -1 means unbounded."""
        left = -1 if self.window is None else self.window - 1
        return (left, 0 if self.causal else -1)

