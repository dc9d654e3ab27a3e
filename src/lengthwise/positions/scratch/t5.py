"""T5 relative bias (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer"): a learned scalar per head and distance bucket; exact buckets for short distances, logarithmic ones
up to max_distance, one bucket beyond. Causal: only keys at or before the query (bidirectional=False in HF).
"""
import math

import torch

from ...models import embedding
from .base import Scheme


def bucket(relative: torch.Tensor, bidirectional: bool = False, num_buckets: int = 32,
           max_distance: int = 128) -> torch.Tensor:
    """relative = key position - query position -> bucket ids, as T5 computes them."""
    out = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        out = out + (relative > 0).to(relative.dtype) * num_buckets
        n = relative.abs()
    else:
        n = (-relative).clamp(min=0)
    exact = num_buckets // 2
    small = n < exact
    large = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                     * (num_buckets - exact)).to(relative.dtype)
    large = large.clamp(max=num_buckets - 1)
    return out + torch.where(small, n, large)


class T5Bias(Scheme):
    name = "t5"
    has_bias = True
    cached = False  # the bias needs every key's position: packed forwards only

    def __init__(self, shape, num_buckets: int = 32, max_distance: int = 128):
        super().__init__(shape)
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.table = embedding(num_buckets, shape.n_heads)

    def bias(self, pos_q, pos_k):
        b = bucket(pos_k[..., None, :] - pos_q[..., :, None], False, self.num_buckets, self.max_distance)  # [..., Lq, Lk]
        return self.table(b).movedim(-1, -3).float()  # [..., H, Lq, Lk]
