"""The interface of a position encoding built into a model trained from scratch (the length lab).

A scheme is an nn.Module (it may hold weights, trained with the model) with up to four hooks, each a no-op
by default; `Llama.forward` calls them in this order:

    remap(positions, cu_seqlens) -> positions [T]   which index each token is seen at (randomized positions)
    embed(tokens, positions, cu_seqlens) -> [T, dim] | None  added to the token embeddings (learned, sinusoidal, Abacus)
    rotary                      -> bool             rotate q and k by RoPE at those positions
    bias(pos_q, pos_k)          -> [H, Lq, Lk]      added to one sequence's attention logits (ALiBi, T5, FIRE)

Biases run on the `reference` attention kernel (attention/reference.py), which adds them per sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn



@dataclass(frozen=True)
class Shape:
    """What a scheme needs to know about its model."""
    dim: int
    n_heads: int
    head_dim: int


class Scheme(nn.Module):
    name = ""
    rotary = False
    has_bias = False
    cached = True  # runs against a KV cache (generation); False: packed forwards only

    def __init__(self, shape: Shape):
        super().__init__()
        self.shape = shape

    def remap(self, positions: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        return positions

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor | None:
        return None

    def bias(self, pos_q: torch.Tensor, pos_k: torch.Tensor) -> torch.Tensor | None:
        """[..., H, Lq, Lk] float32 from the positions of queries [..., Lq] and keys [..., Lk]: one sequence's, or a
        batch of them along the leading dimensions."""
        return None

    def biases(self, positions: torch.Tensor, meta) -> "SequenceBias | None":
        """The bias of each sequence of one packed forward (queries are the keys: no KV cache)."""
        if not self.has_bias:
            return None
        return SequenceBias(self, positions, meta.cu_q.tolist())


class SequenceBias:
    """Called by the reference kernel per sequence i: the bias of its last n_q queries against its first n_k keys."""

    def __init__(self, scheme: Scheme, positions: torch.Tensor, cu: list[int]):
        self.scheme, self.positions, self.cu = scheme, positions, cu

    def __call__(self, i: int, n_q: int, n_k: int) -> torch.Tensor:
        pos = self.positions[self.cu[i]:self.cu[i + 1]]
        return self.scheme.bias(pos[n_k - n_q:n_k], pos[:n_k])

    def batch(self, seqs: list[int], n: int) -> torch.Tensor:
        """[len(seqs), H, n, n]: the self-attention bias of sequences seqs, each n long, in one call."""
        starts = torch.tensor([self.cu[i] for i in seqs], device=self.positions.device)
        pos = self.positions[starts[:, None] + torch.arange(n, device=self.positions.device)]  # [B, n]
        return self.scheme.bias(pos, pos)
