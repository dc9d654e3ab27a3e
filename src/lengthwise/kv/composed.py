"""A token policy and ThinK together: `snapkv:ratio=0.5+think:ratio=0.25` (kvpress's ComposedPress([SnapKVPress,
ThinKPress])).

At the context's end the token policy keeps its budget first, then ThinK chooses each (sequence, kv head)'s key
channels over the tokens kept, from the context's last `window` queries, and the cache stores the kept keys at
that width (kv/think.py, kv/cache.py: prune_keys). The bytes multiply: (1 - r_tokens) of the context, its keys at
(1 - 2 r_think) of their channels. Both act once, at the end of one prefill forward over the context (ThinK
chooses channels over the whole context, so no chunks), and neither evicts in decode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .policy import Budget, Cached, Policy
from .think import ThinK

USAGE = "compose one token policy with think, e.g. snapkv:ratio=0.5+think:ratio=0.25"


@dataclass(frozen=True)
class Composed(Policy):
    name: ClassVar[str] = "composed"
    chunked: ClassVar[bool] = False
    tokens: Policy | None = None  # the token policy (its budget and score)
    think: ThinK | None = None  # the key channels

    @classmethod
    def of(cls, parts: list[Policy]) -> "Composed":
        thinks = [p for p in parts if isinstance(p, ThinK)]
        others = [p for p in parts if not isinstance(p, ThinK)]
        if len(parts) != 2 or len(thinks) != 1:
            raise LengthwiseError(f"KV policies compose two at a time, one of them think: {USAGE}")
        tok = others[0]
        if not isinstance(tok, Budget) or tok.headwise or tok.every:
            raise LengthwiseError(f"{tok.spec()} does not compose with think (a token budget acting once, at the "
                                  f"end of prefill, is needed: no every=, no head-wise budgets): {USAGE}")
        return cls(tokens=tok, think=thinks[0])

    def check(self) -> None:
        if self.tokens is None or self.think is None:
            raise LengthwiseError(USAGE)

    @property
    def evicts(self) -> bool:
        return self.tokens.evicts or self.think.evicts

    @property
    def observe(self) -> int:
        return self.tokens.observe

    @property
    def accumulate(self) -> bool:
        return self.tokens.accumulate

    @property
    def decay(self) -> float:
        return self.tokens.decay

    @property
    def window(self) -> int:  # ThinK's: the last queries that score the channels
        return self.think.window

    def keep(self, n: torch.Tensor) -> torch.Tensor:
        return self.tokens.keep(n) if self.tokens.evicts else n

    def layer_keep(self, n: torch.Tensor, n_layers: int) -> torch.Tensor:
        return self.tokens.layer_keep(n, n_layers) if self.tokens.evicts else n.expand(n_layers, -1)

    def score(self, c: Cached) -> torch.Tensor:
        return self.tokens.score(c)

    def channels(self, queries, ok, keys, valid):
        return self.think.channels(queries, ok, keys, valid)

    def pruned(self, head_dim: int) -> int:
        return self.think.pruned(head_dim)

    def check_head_dim(self, head_dim: int) -> None:
        self.think.check_head_dim(head_dim)

    def spec(self) -> str:
        return f"{self.tokens.spec()}+{self.think.spec()}"
