"""ALiBi (Press et al. 2022, "Train Short, Test Long: Attention with Linear Biases").

Head h adds -m_h * (i - j) to the logit of query i on key j. Slopes are the geometric sequence 2^(-8k/n),
k = 1..n for n heads a power of two; otherwise those of the nearest lower power of two, then every other slope
of twice that many (the paper's code, `get_slopes`).
"""
import math

import torch

from .base import Scheme


def slopes(n_heads: int) -> list[float]:
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    low = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(low) + slopes(2 * low)[0::2][:n_heads - low]


class ALiBi(Scheme):
    name = "alibi"
    has_bias = True
    cached = False  # the bias needs every key's position: packed forwards only

    def bias(self, pos_q, pos_k):
        m = torch.tensor(slopes(self.shape.n_heads), dtype=torch.float32, device=pos_q.device)  # [H]
        dist = (pos_q[..., :, None] - pos_k[..., None, :]).to(torch.float32)  # [..., Lq, Lk], >= 0 where causal allows
        return -m[:, None, None] * dist.abs()[..., None, :, :]  # [..., H, Lq, Lk]
