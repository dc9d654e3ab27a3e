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
        flat = packed_ids(seqs)
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

    def pinned(self) -> "RaggedBatch":
        """A host batch in pinned memory, so that `to` copies without a hidden sync."""
        return RaggedBatch(self.tokens.pin_memory(), self.cu_seqlens.pin_memory(), self.positions.pin_memory(),
                           self.max_seqlen)

    def to(self, device) -> "RaggedBatch":
        return RaggedBatch(_to(self.tokens, device), _to(self.cu_seqlens, device), _to(self.positions, device),
                           self.max_seqlen)

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


def _all_int(types: set) -> bool:
    """Whether every type is an integer type (Python's or numpy's), none of them bool; a few types, not ids."""
    return all(issubclass(t, (int, np.integer)) and not issubclass(t, (bool, np.bool_)) for t in types)


def packed_ids(seqs: Sequence[Sequence[int]]) -> np.ndarray:
    """Every sequence's ids back to back, int64 [T]. Every id must be an integer, a bool is not: checked with one
    numpy conversion and its dtype, plus the set of the ids' types (one pass in C), never a Python loop per id.
    Arrays and tensors are checked by their dtype alone."""
    if all(isinstance(s, list) for s in seqs):  # the common case: plain lists
        # one C pass for the set of the ids' types, one to convert: half the time of np.asarray on the list
        # (the host's packing is serial with a short prefill)
        if set(map(type, itertools.chain.from_iterable(seqs))) <= {int}:
            try:
                return np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=sum(map(len, seqs)))
            except OverflowError:
                raise LengthwiseError("token ids must be integers that fit in 64 bits") from None
        return _checked(list(itertools.chain.from_iterable(seqs)))
    parts = []
    for i, s in enumerate(seqs):
        if isinstance(s, torch.Tensor):
            if s.dtype.is_floating_point or s.dtype.is_complex or s.dtype == torch.bool or s.ndim != 1:
                raise LengthwiseError(f"sequence {i} is a {s.dtype} tensor of shape {tuple(s.shape)}: token ids are "
                                      "a 1-d tensor of an integer dtype")
            parts.append(s.detach().cpu().numpy().astype(np.int64, copy=False))
        elif isinstance(s, np.ndarray):
            if s.dtype.kind not in "iu" or s.ndim != 1:
                raise LengthwiseError(f"sequence {i} is a {s.dtype} array of shape {s.shape}: token ids are a 1-d "
                                      "array of an integer dtype")
            parts.append(_checked(s))
        else:
            parts.append(_checked(list(s)))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _checked(flat) -> np.ndarray:
    try:
        arr = np.asarray(flat)
    except (ValueError, TypeError, OverflowError):  # lists of uneven depth inside
        arr = np.empty(0, dtype=object)
    types = set(map(type, flat)) if isinstance(flat, list) else {arr.dtype.type}
    if arr.dtype.kind in "iu" and arr.ndim == 1 and _all_int(types):
        if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise LengthwiseError(f"token ids must be integers that fit in 64 bits (got {int(arr.max())})")
        return arr.astype(np.int64, copy=False)
    if torch.Tensor in types and _all_int(types - {torch.Tensor}):  # list(tensor) gives 0-d tensors
        if all(x.ndim == 0 and not (x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool)
               for x in flat if isinstance(x, torch.Tensor)):
            return np.array([int(x) for x in flat], dtype=np.int64)
    # the error path: name the first id that is not an integer
    for j, x in enumerate(flat):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) and not (
                isinstance(x, torch.Tensor) and x.ndim == 0 and not x.dtype.is_floating_point):
            raise LengthwiseError(f"token ids must be integers: id {j} of the packed ids is {x!r} "
                                  f"({type(x).__name__}); a float or a bool is not a token id")
        if isinstance(x, int) and not -2**63 <= x < 2**63:
            raise LengthwiseError(f"token ids must be integers that fit in 64 bits (got {x})")
    raise LengthwiseError("token ids must be integers that fit in 64 bits")


def _to(t: torch.Tensor, device) -> torch.Tensor:
    """Host to device without a hidden sync: a copy from pageable memory would wait for the GPU queue."""
    if torch.device(device).type == "cuda":
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    return t.to(device)
