"""RoPE, rotary position embedding (Su et al., RoFormer, 2021).

Each pair of channels is rotated by position * base^(-2i/d); attention then sees only relative offsets.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RoPE:
    def inv_freq(self, head_dim: int, base: float) -> torch.Tensor:
        """[head_dim/2] float32 angular frequencies."""
        return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))

    def cos_sin(self, positions: torch.Tensor, head_dim: int, base: float):
        """positions [T] -> cos, sin [T, head_dim] float32."""
        inv = _on_device(self, head_dim, base, positions.device)
        ang = positions.float()[:, None] * inv[None, :]  # [T, head_dim/2]
        emb = torch.cat((ang, ang), dim=-1)
        return emb.cos(), emb.sin()


_INV_FREQ: dict = {}


def _on_device(scheme, head_dim: int, base: float, device: torch.device) -> torch.Tensor:
    # computed once on the CPU (bit-equal to HF's init), then kept on the device: no copy per step,
    # which also keeps decode steps capturable in a CUDA graph (a plain dict, which torch.compile traces)
    key = (scheme, head_dim, base, str(device))
    if key not in _INV_FREQ:
        _INV_FREQ[key] = scheme.inv_freq(head_dim, base).to(device)
    return _INV_FREQ[key]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] rotated by cos, sin [T, D]; the math runs in x's dtype, as HF does."""
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
