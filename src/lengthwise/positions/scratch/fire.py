"""FIRE (Li et al. 2024, "Functional Interpolation for Relative Positions Improves Long Context Transformers").

b(i, j) = f(psi(i - j) / psi(max(L, i))), psi(x) = log(c x + 1), f a small MLP (1 -> width -> heads); c and the
threshold L are learned. Normalizing by the query's own position maps every distance into [0, 1], at any length.
Initial values (c = 1, L = 8, width 32) are ours.
"""

import torch
import torch.nn as nn

from .base import Scheme


class FIRE(Scheme):
    name = "fire"
    has_bias = True
    cached = False  # the bias needs every key's position: packed forwards only

    def __init__(self, shape, width: int = 32, c: float = 1.0, threshold: float = 8.0):
        super().__init__(shape)
        self.c = nn.Parameter(torch.tensor(float(c)))
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))
        self.mlp = nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, shape.n_heads))

    def normalized(self, pos_q: torch.Tensor, pos_k: torch.Tensor) -> torch.Tensor:
        """The MLP's input [..., Lq, Lk]: psi(i - j) / psi(max(L, i)), with distances below zero (masked anyway)
        at 0."""
        c = self.c.abs()
        i = pos_q.to(torch.float32)[..., :, None]
        dist = (i - pos_k.to(torch.float32)[..., None, :]).clamp(min=0)
        return torch.log(c * dist + 1) / torch.log(c * torch.maximum(self.threshold.abs(), i) + 1)

    def bias(self, pos_q, pos_k):
        return self.mlp(self.normalized(pos_q, pos_k)[..., None]).movedim(-1, -3)  # [..., H, Lq, Lk]
