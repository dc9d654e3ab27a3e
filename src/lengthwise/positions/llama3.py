"""Llama 3.1 frequency scaling (Meta, 2024; HF rope_type "llama3").

Wavelengths shorter than trained/high_freq_factor stay, longer than trained/low_freq_factor are
divided by `factor`, and a smooth blend lies between. Listed so Llama 3.x checkpoints load as trained.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .rope import RoPE, at_least_one, check_original, default_inv_freq


@dataclass(frozen=True)
class Llama3(RoPE):
    name: ClassVar[str] = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original: int = 0  # 0: the model's own trained length

    def check(self, trained):
        at_least_one("factor", self.factor, self.name)
        if not self.high_freq_factor > self.low_freq_factor > 0:
            raise LengthwiseError("llama3: need high_freq_factor > low_freq_factor > 0")
        check_original(self.name, self.original, trained)

    def inv_freq(self, head_dim, base, trained):
        orig = self.original or trained
        inv = default_inv_freq(head_dim, base)
        wavelen = 2 * math.pi / inv
        out = torch.where(wavelen > orig / self.low_freq_factor, inv / self.factor, inv)
        smooth = (orig / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        blended = (1 - smooth) * out / self.factor + smooth * out
        medium = ~(wavelen < orig / self.high_freq_factor) * ~(wavelen > orig / self.low_freq_factor)
        return torch.where(medium, blended, out)

    def reach(self, trained):
        return int((self.original or trained) * self.factor)
