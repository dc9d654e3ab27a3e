"""Randomized positions (Ruoss et al. 2023, "Randomized Positional Encodings Boost Length Generalization of
Transformers"): a sequence of n tokens is seen at n sorted positions drawn without replacement from
[0, max_positions), so training covers positions far past its lengths; the base scheme encodes them.

Training draws from torch's generator (the run's seed); evaluation draws from one seeded by each sequence's
length, so a sequence scores the same alone or packed with others.
"""
import torch

from ...errors import LengthwiseError
from .base import Scheme


class Randomized(Scheme):
    name = "randomized"

    def __init__(self, shape, base: Scheme, max_positions: int = 1024):
        super().__init__(shape)
        self.base, self.max_positions = base, max_positions
        self.rotary, self.has_bias = base.rotary, base.has_bias
        self.cached = False  # positions (places) depend on the whole sequence: packed forwards only

    def remap(self, positions, cu_seqlens):
        out = torch.empty_like(positions)
        cu = cu_seqlens.tolist()
        for a, b in zip(cu[:-1], cu[1:]):
            n = b - a
            if n > self.max_positions:
                raise LengthwiseError(f"randomized positions: a sequence of {n} tokens needs max_positions >= {n}, "
                                      f"it is {self.max_positions}")
            gen = None if self.training else torch.Generator().manual_seed(n)
            out[a:b] = torch.randperm(self.max_positions, generator=gen)[:n].sort().values.to(positions.device)
        return out

    def embed(self, tokens, positions, cu_seqlens):
        return self.base.embed(tokens, positions, cu_seqlens)

    def bias(self, pos_q, pos_k):
        return self.base.bias(pos_q, pos_k)
