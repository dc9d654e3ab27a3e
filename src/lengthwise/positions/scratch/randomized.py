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
        cu = cu_seqlens.tolist()
        lens = [b - a for a, b in zip(cu[:-1], cu[1:])]
        longest = max(lens, default=0)
        if longest > self.max_positions:
            raise LengthwiseError(f"randomized positions: a sequence of {longest} tokens needs max_positions >= "
                                  f"{longest}, it is {self.max_positions}")
        if not lens:
            return positions
        if self.training:
            return self._draw(lens, positions.device, None)
        # evaluation: one draw per distinct length from a generator seeded by that length (the same alone or packed)
        out = torch.empty_like(positions)
        for n in set(lens):
            draw = torch.randperm(self.max_positions, generator=torch.Generator().manual_seed(n))[:n].sort().values
            draw = draw.to(positions.device)
            for a, m in zip(cu[:-1], lens):
                if m == n:
                    out[a:a + n] = draw
        return out

    def _draw(self, lens: list[int], device, gen) -> torch.Tensor:
        """For each length n, n sorted positions drawn without replacement from [0, max_positions), all sequences
        at once on `device`: the first n columns of a random permutation per row (argsort of uniform noise), sorted."""
        k, m = len(lens), max(lens)
        perm = torch.rand(k, self.max_positions, device=device, generator=gen).argsort(dim=1)[:, :m]
        n = torch.tensor(lens, device=device)
        keep = torch.arange(m, device=device) < n[:, None]
        picked = torch.where(keep, perm, self.max_positions).sort(dim=1).values  # unused columns sort last
        return picked[keep]

    def embed(self, tokens, positions, cu_seqlens):
        return self.base.embed(tokens, positions, cu_seqlens)

    def bias(self, pos_q, pos_k):
        return self.base.bias(pos_q, pos_k)
