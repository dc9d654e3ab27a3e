"""TOVA (Oren et al., "Transformers are Multi-State RNNs", 2024): token omission via attention.

Rank the cached tokens by the attention the newest query gives them, averaged over every head of the layer,
and drop the lowest; all heads keep the same tokens. As in the paper it can act at every decode step with a
fixed budget (`tova:tokens=N,every=1`); at the end of prefill it scores with the prompt's last query, as
kvpress's `tova` press does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .policy import Budget


@dataclass(frozen=True)
class TOVA(Budget):
    name: ClassVar[str] = "tova"
    observe: ClassVar[int] = 1

    def score(self, c):
        w = c.weights[:, :, -1, :].mean(1)  # [B, S]: the last query's weights, averaged over all heads
        return w[:, None, :].expand(-1, c.n_kv_heads, -1)
