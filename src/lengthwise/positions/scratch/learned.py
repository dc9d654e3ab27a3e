"""Learned absolute positions (Radford et al. 2018, GPT; the PE study's APE).

A table of one vector per position, added to the token embeddings; rows past the training length stay at their
random init, which is why APE fails to extrapolate.
"""

from ...errors import LengthwiseError
from ...models import embedding
from .base import Scheme, Shape


class Learned(Scheme):
    name = "learned"

    def __init__(self, shape: Shape, max_positions: int = 1024):
        super().__init__(shape)
        self.table = embedding(max_positions, shape.dim)

    def embed(self, tokens, positions, cu_seqlens):
        if int(positions.max()) >= self.table.num_embeddings:
            raise LengthwiseError(f"learned positions: position {int(positions.max())} is past the table's "
                                  f"{self.table.num_embeddings} rows (max_positions)")
        return self.table(positions)
