"""Knorm (Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression", EMNLP 2024).

Keys with a small L2 norm draw high attention, so keep the keys of smallest norm. RoPE is a rotation and leaves
the norm alone, so the cached (rotated) keys score as the unrotated ones do. Reads no attention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .policy import Budget


@dataclass(frozen=True)
class Knorm(Budget):
    name: ClassVar[str] = "knorm"

    def score(self, c):
        return -c.keys.float().norm(dim=-1).transpose(1, 2)  # [B, Hkv, S]
