"""LongRoPE-style per-dimension factors (Ding et al., 2024, "LongRoPE: Extending LLM Context Window
Beyond 2 Million Tokens"; HF rope_type "longrope").

Each frequency i is divided by its own factor lambda_i (found by LongRoPE's search, supplied here by
the user), and attention is sharpened by sqrt(1 + ln(s) / ln(trained)). With short_factors, a
sequence no longer than the trained length uses those instead, decided per sequence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .rope import RoPE


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

    @property
    def dynamic(self) -> bool:  # type: ignore[override]
        return bool(self.short_factors)

    @property
    def s(self) -> float:
        return self.factor or max(self.factors)

    def check(self, trained):
        if not self.factors:
            raise LengthwiseError("longrope: give the per-dimension factors, e.g. longrope:factors=@factors.json "
                                  "(a JSON list of head_dim/2 numbers) or factors=1/1.5/2/...")
        if min(self.factors + self.short_factors) <= 0 or self.factor < 0 or self.attn_factor < 0:
            raise LengthwiseError("longrope: every factor must be > 0")

    def _inv(self, ext: tuple[float, ...], head_dim: int, base: float, device=None) -> torch.Tensor:
        if len(ext) != head_dim // 2:
            raise LengthwiseError(f"longrope: {len(ext)} factors given, the model's head_dim {head_dim} needs {head_dim // 2}")
        shape = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
        return 1.0 / (torch.tensor(ext, dtype=torch.float32, device=device) * base ** shape)

    def inv_freq(self, head_dim, base, trained):
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
