"""RaggedBatch: many sequences packed into one token stream, FlashAttention varlen style."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .errors import LengthwiseError


@dataclass
class RaggedBatch:
    tokens: torch.Tensor  # [T] int64, every sequence back to back, no padding
    cu_seqlens: torch.Tensor  # [B+1] int32, sequence i is tokens[cu[i]:cu[i+1]]
    positions: torch.Tensor  # [T] int64, restarts at 0 for each sequence
    max_seqlen: int

    @classmethod
    def from_lists(cls, seqs: Sequence[Sequence[int]], device: torch.device | str = "cpu",
                   vocab: int | None = None) -> "RaggedBatch":
        """vocab: check every id is in 0..vocab-1 (one pass over the packed ids, before they reach a device,
        where an id past the embedding is a device-side assert rather than an error)."""
        if len(seqs) == 0:
            raise LengthwiseError("empty batch: give at least one sequence")
        lens = [len(s) for s in seqs]
        if min(lens) == 0:
            raise LengthwiseError(f"sequence {lens.index(0)} is empty: every sequence needs at least one token")
        lens_t = torch.tensor(lens, dtype=torch.int64)
        try:
            flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=sum(lens))
        except (OverflowError, TypeError, ValueError) as e:  # an id past 64 bits, a None or a string inside
            raise LengthwiseError(f"token ids must be integers that fit in 64 bits ({e})") from None
        if vocab is not None and (flat.min() < 0 or flat.max() >= vocab):
            bad = int(flat[(flat < 0) | (flat >= vocab)][0])
            raise LengthwiseError(f"token id {bad} is outside this model's vocabulary 0..{vocab - 1}")
        return cls.from_lens(torch.from_numpy(flat), lens_t, device)

    @classmethod
    def from_lens(cls, tokens: torch.Tensor, lens: torch.Tensor, device: torch.device | str = "cpu") -> "RaggedBatch":
        cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(lens, 0)
        # position = index minus the start of its own sequence
        starts = torch.repeat_interleave(cu[:-1].to(torch.int64), lens)
        positions = torch.arange(int(cu[-1]), dtype=torch.int64) - starts
        return cls(_to(tokens, device), _to(cu, device), _to(positions, device), int(lens.max()))

    @classmethod
    def from_texts(cls, texts: Sequence[str], tokenizer, device: torch.device | str = "cpu", **kw) -> "RaggedBatch":
        return cls.from_lists(tokenizer(list(texts), **kw)["input_ids"], device)

    @property
    def num_seqs(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def num_tokens(self) -> int:
        return self.tokens.numel()

    @property
    def lens(self) -> list[int]:
        return self.cu_seqlens.diff().tolist()

    @property
    def last_index(self) -> torch.Tensor:
        """[B] index of each sequence's last token in the packed stream."""
        return self.cu_seqlens[1:].to(torch.int64) - 1

    @property
    def seq_ids(self) -> torch.Tensor:
        """[T] which sequence each token belongs to."""
        lens = self.cu_seqlens.diff().to(torch.int64)
        return torch.repeat_interleave(torch.arange(len(lens), device=lens.device), lens)

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Split a packed [T, ...] output back into per-sequence [len_i, ...] views."""
        return list(torch.split(x, self.lens, dim=0))


def _to(t: torch.Tensor, device) -> torch.Tensor:
    """Host to device without a hidden sync: a copy from pageable memory would wait for the GPU queue."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
