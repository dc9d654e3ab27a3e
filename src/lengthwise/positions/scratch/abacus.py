"""Abacus embeddings (McLeish et al. 2024, "Transformers Can Do Arithmetic with the Right Embeddings").

Each digit gets a learned embedding of its place within its own number (1 for the first digit of a run, 2 for
the next, ...); other tokens get none. In training every sequence's places shift by a random offset in
[0, max_offset], so embeddings far past the training lengths are learned too. Attention itself runs on the base
scheme (NoPE by default, as in the paper).
"""
import torch

from ...errors import LengthwiseError
from ...models import embedding
from .base import Scheme


class Abacus(Scheme):
    name = "abacus"

    def __init__(self, shape, base: Scheme, digit_ids: tuple[int, ...], max_places: int = 256, max_offset: int = 100):
        super().__init__(shape)
        self.base, self.max_offset = base, max_offset
        self.rotary, self.has_bias = base.rotary, base.has_bias
        self.cached = False  # positions (places) depend on the whole sequence: packed forwards only
        self.table = embedding(max_places + 1, shape.dim)  # row 0: not a digit
        self.digit_ids = tuple(digit_ids)

    def places(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """[T] 1-based place of each digit within its run of digits, 0 for other tokens."""
        is_digit = torch.isin(tokens, torch.tensor(self.digit_ids, device=tokens.device))
        idx = torch.arange(len(tokens), device=tokens.device)
        starts = torch.zeros(len(tokens), dtype=torch.bool, device=tokens.device)
        starts[cu_seqlens[:-1].long()] = True
        run_start = is_digit & (starts | ~torch.cat([is_digit.new_zeros(1), is_digit[:-1]]))
        first = torch.cummax(torch.where(run_start, idx, torch.zeros_like(idx)), 0).values
        return torch.where(is_digit, idx - first + 1, torch.zeros_like(idx))

    def remap(self, positions, cu_seqlens):
        return self.base.remap(positions, cu_seqlens)

    def embed(self, tokens, positions, cu_seqlens):
        places = self.places(tokens, cu_seqlens)
        if self.training and self.max_offset > 0:
            lens = cu_seqlens.diff().long()
            k = torch.randint(0, self.max_offset + 1, (len(lens),), device=tokens.device)
            places = torch.where(places > 0, places + torch.repeat_interleave(k, lens), places)
        if int(places.max()) >= self.table.num_embeddings:
            raise LengthwiseError(f"abacus: a number of {int(places.max())} digits is past max_places "
                                  f"{self.table.num_embeddings - 1}")
        e = self.table(places)
        b = self.base.embed(tokens, positions, cu_seqlens)
        return e if b is None else e + b

    def bias(self, pos_q, pos_k):
        return self.base.bias(pos_q, pos_k)
