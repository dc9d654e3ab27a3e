"""YaRN (Peng et al., 2023, "YaRN: Efficient Context Window Extension of Large Language Models").

Per frequency: dimensions that rotate many times within the trained length keep their frequency,
those that rotate less than once are interpolated by `factor`, with a linear ramp between
(beta_fast, beta_slow rotations). Attention logits are sharpened by a temperature, applied as
cos and sin times 0.1 ln(factor) + 1, as in HF's rope_type "yarn".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .rope import RoPE, at_least_one, default_inv_freq


@dataclass(frozen=True)
class YaRN(RoPE):
    name: ClassVar[str] = "yarn"
    factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attn_factor: float = 0.0  # 0: the paper's 0.1 ln(factor) + 1
    original: int = 0  # the trained length the ramp is measured against; 0: the model's own
    truncate: bool = True  # round the ramp ends to whole dimensions, as HF does by default

    def check(self, trained):
        at_least_one("factor", self.factor, self.name)
        if not self.beta_fast > self.beta_slow > 0:
            raise LengthwiseError(f"yarn: need beta_fast > beta_slow > 0, got {self.beta_fast:g} and {self.beta_slow:g}")
        if self.attn_factor < 0 or self.original < 0:
            raise LengthwiseError("yarn: attn_factor and original must be >= 0 (0 means the default)")

    def inv_freq(self, head_dim, base, trained):
        orig = self.original or trained
        extra = default_inv_freq(head_dim, base)  # [D/2]
        inter = extra / self.factor

        def dim_of(rotations):  # the dimension that turns `rotations` times over the trained length
            return head_dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low, high = dim_of(self.beta_fast), dim_of(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, head_dim - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        keep = 1 - ramp  # 1: extrapolate (keep the trained frequency), 0: interpolate
        return inter * (1 - keep) + extra * keep

    def attention_factor(self, trained):
        if self.attn_factor:
            return self.attn_factor
        return 1.0 if self.factor <= 1 else 0.1 * math.log(self.factor) + 1.0

    def reach(self, trained):
        return int((self.original or trained) * self.factor)
