"""Sinusoidal absolute positions (Vaswani et al. 2017, "Attention Is All You Need").

PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)), added to the token embeddings.
"""
import torch

from .base import Scheme


class Sinusoidal(Scheme):
    name = "sinusoidal"

    def embed(self, tokens, positions, cu_seqlens):
        d = self.shape.dim
        inv = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64, device=positions.device) / d)  # [d/2]
        ang = positions.to(torch.float64)[:, None] * inv  # [T, d/2]
        pe = torch.stack([ang.sin(), ang.cos()], dim=-1).reshape(len(positions), -1)[:, :d]
        return pe.to(torch.float32)
