"""StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024).

Keep the first `sinks` tokens, which soak up attention mass whatever they say, and the newest ones up to the
budget; drop the middle. kvpress's `streaming_llm` press with the same budget keeps the same tokens. It reads
no attention, so it costs one top-k per eviction; `window` is the same method with a fixed token count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .policy import Budget


@dataclass(frozen=True)
class Streaming(Budget):
    name: ClassVar[str] = "streaming"
    sinks: int = 4

    def check(self) -> None:
        super().check()
        if self.sinks < 0:
            raise LengthwiseError(f"streaming: sinks must be >= 0, got {self.sinks}")
        if self.tokens and self.tokens <= self.sinks:
            raise LengthwiseError(f"streaming: tokens={self.tokens} keeps no more than the {self.sinks} sinks (a token "
                                  f"budget must pass them): give tokens > {self.sinks}, or lower sinks=")

    def score(self, c):
        p = c.positions.transpose(1, 2).double()  # [B, Hkv, S]
        return torch.where(p < self.sinks, torch.inf, p)
