"""LongRoPE-style per-dimension factors (Ding et al., 2024, "LongRoPE: Extending LLM Context Window
Beyond 2 Million Tokens"; HF rope_type "longrope").

Each frequency i is divided by its own factor lambda_i (found by LongRoPE's search, supplied here by
the user), and attention is sharpened by sqrt(1 + ln(s) / ln(trained)). With short_factors, a
sequence no longer than the trained length uses those instead, decided per sequence.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .rope import RoPE, check_original


@functools.lru_cache(maxsize=32)
def _table(ext: tuple[float, ...], head_dim: int, base: float, device: str) -> torch.Tensor:
    """[D/2] frequencies, built once per device: no host-to-device copy per step (CUDA-graph capture)."""
    with torch.device("cpu"):
        shape = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        inv = 1.0 / (torch.tensor(ext, dtype=torch.float32) * base ** shape)
    return inv.to(device)


@dataclass(frozen=True)
class LongRoPE(RoPE):
    name: ClassVar[str] = "longrope"
    factors: tuple[float, ...] = ()  # [D/2] rescale factor per frequency, for long sequences
    short_factors: tuple[float, ...] = ()  # [D/2] for sequences within the trained length; () = factors always
    factor: float = 0.0  # the extension ratio s (attention factor and reach); 0: max(factors)
    attn_factor: float = 0.0  # 0: sqrt(1 + ln(s) / ln(trained))
    original: int = 0  # 0: the model's own trained length
    source: str = ""  # the JSON file the factors came from (factors=@file), named in spec()

    def spec(self) -> str:
        if not self.source:
            return super().spec()
        rest = super().spec().split(":", 1)[1].split(",")
        return "longrope:" + ",".join([f"factors=@{self.source}"] + [a for a in rest if not a.startswith(("factors=", "source="))])

    def per_length(self):
        return bool(self.short_factors)

    @property
    def s(self) -> float:
        return self.factor or max(self.factors)

    def check(self, trained):
        if not self.factors:
            raise LengthwiseError("longrope: give the per-dimension factors, e.g. longrope:factors=@factors.json "
                                  "(a JSON list of head_dim/2 numbers) or factors=1/1.5/2/...")
        vals = self.factors + self.short_factors
        if not all(0 < v < float("inf") for v in vals) or not (0 <= self.factor < float("inf")) or self.attn_factor < 0:
            raise LengthwiseError("longrope: every factor must be a finite number > 0")
        check_original(self.name, self.original, trained)
        if self.short_factors and len(self.short_factors) != len(self.factors):
            raise LengthwiseError(f"longrope: {len(self.short_factors)} short_factors for {len(self.factors)} factors")

    def _inv(self, ext: tuple[float, ...], head_dim: int, base: float, device=None) -> torch.Tensor:
        if len(ext) != head_dim // 2:
            raise LengthwiseError(f"longrope: {len(ext)} factors given, the model's head_dim {head_dim} needs {head_dim // 2}")
        return _table(ext, head_dim, base, str(device or "cpu"))

    def inv_freq(self, head_dim, base, trained):
        if self.short_factors:
            self._inv(self.short_factors, head_dim, base)  # a wrong count fails at load, not mid-run
        return self._inv(self.factors, head_dim, base)

    def inv_freq_at(self, seq_len, head_dim, base, trained):
        """seq_len [N] -> [N, D/2]: long factors past the trained length, short ones within it."""
        long = self._inv(self.factors, head_dim, base, seq_len.device)
        short = self._inv(self.short_factors, head_dim, base, seq_len.device)
        return torch.where((seq_len > (self.original or trained))[:, None], long[None], short[None])

    def attention_factor(self, trained):
        if self.attn_factor:
            return self.attn_factor
        s = self.s
        return 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(self.original or trained))

    def reach(self, trained):
        return int((self.original or trained) * self.s)
