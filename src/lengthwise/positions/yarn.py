"""YaRN (Peng et al., 2023, "YaRN: Efficient Context Window Extension of Large Language Models").

Per frequency: dimensions that rotate many times within the trained length keep their frequency,
those that rotate less than once are interpolated by `factor`, with a linear ramp between
(beta_fast, beta_slow rotations). Attention logits are sharpened by a temperature, applied as
cos and sin times 0.1 ln(factor) + 1, as in HF's rope_type "yarn".

dynamic=true is the paper's Dynamic Scaling (section 3.3): each sequence uses the static form at
s = min(factor, max(1, L / original)) for its own current length L, so within the trained length it
is the plain model, bit for bit (keys already cached keep their rotation, as with dynamic_ntk).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .rope import RoPE, at_least_one, check_original, default_inv_freq


@functools.lru_cache(maxsize=None)  # never evicted: a captured CUDA graph reads these tables by address
def _table(head_dim: int, base: float, orig: int, beta_fast: float, beta_slow: float, truncate: bool,
           device: str) -> torch.Tensor:
    """[2, D/2]: the trained frequencies and how much of each is kept (1: extrapolate, 0: interpolate).
    Built on the CPU, once per device: the same bits everywhere, and no copy per step (CUDA-graph capture)."""
    def dim_of(rotations):  # the dimension that turns `rotations` times over the trained length
        return head_dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    with torch.device("cpu"):
        extra = default_inv_freq(head_dim, base)  # [D/2]
        ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        return torch.stack([extra, 1 - ramp]).to(device)


def _blend(extra: torch.Tensor, keep: torch.Tensor, factor) -> torch.Tensor:
    """Each frequency between interpolated (extra / factor) and kept (extra); factor a number or [N, 1] float32."""
    return (extra / factor) * (1 - keep) + extra * keep


@dataclass(frozen=True)
class YaRN(RoPE):
    name: ClassVar[str] = "yarn"
    factor: float = 4.0  # dynamic: the largest scale, reached at original * factor tokens
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attn_factor: float = 0.0  # 0: the paper's 0.1 ln(factor) + 1
    original: int = 0  # the trained length the ramp is measured against; 0: the model's own
    truncate: bool = True  # round the ramp ends to whole dimensions, as HF does by default
    dynamic: bool = False  # scale by each sequence's own length: s = min(factor, max(1, L / original))

    def per_length(self):
        return self.dynamic

    def check(self, trained):
        at_least_one("factor", self.factor, self.name)
        if not self.beta_fast > self.beta_slow > 0:
            raise LengthwiseError(f"yarn: need beta_fast > beta_slow > 0, got {self.beta_fast:g} and {self.beta_slow:g}")
        if self.attn_factor < 0 or self.original < 0:
            raise LengthwiseError("yarn: attn_factor and original must be >= 0 (0 means the default)")
        check_original(self.name, self.original, trained)

    def _table(self, head_dim, base, trained, device="cpu"):
        return _table(head_dim, float(base), self.original or trained, self.beta_fast, self.beta_slow, self.truncate,
                      str(device))

    def inv_freq(self, head_dim, base, trained):
        extra, keep = self._table(head_dim, base, trained)
        if self.dynamic:
            return extra.clone()  # per token: inv_freq_at
        return _blend(extra, keep, self.factor)

    def _scale(self, seq_len, trained):
        """seq_len [N] -> [N] float64 scale s = clamp(L / original, 1, factor)."""
        return (seq_len.double() / (self.original or trained)).clamp(1.0, self.factor)

    def inv_freq_at(self, seq_len, head_dim, base, trained):
        """seq_len [N] -> [N, D/2]: the static frequencies at factor s, exactly; at s == 1 plain RoPE's."""
        extra, keep = self._table(head_dim, base, trained, seq_len.device)  # [D/2] each
        s = self._scale(seq_len, trained)[:, None]  # [N, 1]
        return torch.where(s > 1, _blend(extra, keep, s.float()), extra)  # the blend is not exact at s == 1

    def attention_factor(self, trained):
        if self.dynamic:
            return 1.0  # per token: attention_factor_at
        if self.attn_factor:
            return self.attn_factor
        return 1.0 if self.factor <= 1 else 0.1 * math.log(self.factor) + 1.0

    def attention_factor_at(self, seq_len, trained):
        """seq_len [N] -> [N] float64: the static factor at s, and exactly 1 at s == 1."""
        if not self.dynamic:
            return None
        s = self._scale(seq_len, trained)
        f = torch.full_like(s, self.attn_factor) if self.attn_factor else 0.1 * s.log() + 1.0
        return torch.where(s > 1, f, 1.0)

    def reach(self, trained):
        return int((self.original or trained) * self.factor)
