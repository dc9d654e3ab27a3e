"""Packed training batches: samples back to back with their document mask (cu_seqlens), and the targets that
loss sees (the answer tokens). Five ways to fill a step of `tokens` tokens:

- `docs`: whole samples, each its own document (the lab's default);
- `buckets`: Dataset Decomposition (Pouransari et al. 2024): every sample cut into pieces of 2^k tokens (the
  binary digits of its length), each piece a document in bucket k; a step takes tokens / 2^k pieces of one
  bucket, picked by the Grow-P2 curriculum (`grow_odds`);
- `buckets_whole`: the same buckets and curriculum, but a sample is never cut: it goes whole into bucket
  ceil(log2(length)) (lengths 2^(k-1)+1 .. 2^k), and a step takes whole samples of one bucket up to `tokens`
  (a bucket is drawn from once it holds a whole step). For tasks whose later pieces are unlearnable without their
  prompt (every algorithmic task);
- `chunk`: concat-and-chunk, no mask: the sample stream cut into chunks of `chunk` tokens, each one document, so
  attention crosses sample boundaries;
- `chunk_masked`: the same chunks with document masks: each sample's piece of a chunk is its own document.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import LengthwiseError
from ..ragged import RaggedBatch

FILLS = ("docs", "buckets", "buckets_whole", "chunk", "chunk_masked")
IGNORE = -100


@dataclass
class Piece:
    """Tokens of one document in a batch, and per token whether it is an answer token (scored when predicted)."""
    ids: list[int]
    scored: list[bool]


@dataclass
class TrainBatch:
    batch: RaggedBatch
    targets: torch.Tensor  # [T] the next token where it is an answer token of the same document, else IGNORE

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE).sum())


def pack(pieces: list[Piece], device="cpu", docs: list[list[int]] | None = None) -> TrainBatch:
    """One packed batch of pieces. docs: the lengths of the documents inside each piece (concat-and-chunk with
    masks), else each piece is one document. A target never crosses a piece's end."""
    ids = [p.ids for p in pieces]
    lens = [len(p.ids) for p in pieces] if docs is None else [n for d in docs for n in d]
    flat = torch.tensor([t for s in ids for t in s], dtype=torch.int64)
    batch = RaggedBatch.from_lens(flat, torch.tensor(lens, dtype=torch.int64), device)
    targets = []
    for p in pieces:
        targets += [p.ids[j + 1] if j + 1 < len(p.ids) and p.scored[j + 1] else IGNORE for j in range(len(p.ids))]
    t = torch.tensor(targets, dtype=torch.int64)
    if docs is not None:  # a target across a document boundary inside a chunk: the mask hides its context
        t[batch.cu_seqlens[1:].long() - 1] = IGNORE
    return TrainBatch(batch, t.to(device))


def grow_odds(n_buckets: int, progress: float, cycles: int = 8, power: float = 2.0) -> list[float]:
    """Grow-P2, our reading of Pouransari et al. 2024: within each of `cycles` cycles the odds of bucket k
    (0 = shortest) against the shortest rise from power^-1 to power^+1 for the longest, log-linearly in k, so
    each cycle runs short to long. progress: 0..1 through training."""
    u = (progress * cycles) % 1.0
    if n_buckets == 1:
        return [1.0]
    return [power ** ((k / (n_buckets - 1)) * (2 * u - 1)) for k in range(n_buckets)]


class Filler:
    """Makes the pieces of each step from a stream of samples (`draw()` -> Piece), at `tokens` tokens a step."""

    def __init__(self, fill: str, draw: Callable[[], Piece], tokens: int, chunk: int, rng: random.Random):
        if fill not in FILLS:
            raise LengthwiseError(f"unknown fill {fill!r}: choose one of {', '.join(FILLS)}")
        self.fill, self.draw, self.tokens, self.chunk, self.rng = fill, draw, tokens, chunk, rng
        self.buckets: dict[int, list[Piece]] = {}
        self.stream: list[tuple[int, bool, int]] = []  # (token, scored, sample index) not yet chunked
        self.n_drawn = 0

    def step(self, device, progress: float) -> TrainBatch:
        return getattr(self, "_" + self.fill)(device, progress)

    def _docs(self, device, progress):
        pieces, n = [], 0
        while n < self.tokens:
            p = self.draw()
            pieces.append(p)
            n += len(p.ids)
        return pack(pieces, device)

    def _refill_stream(self, need: int):
        while len(self.stream) < need:
            p = self.draw()
            self.n_drawn += 1
            self.stream += [(t, s, self.n_drawn) for t, s in zip(p.ids, p.scored)]

    def _chunks(self):
        n = max(1, self.tokens // self.chunk)
        self._refill_stream(n * self.chunk)
        out = [self.stream[i * self.chunk:(i + 1) * self.chunk] for i in range(n)]
        self.stream = self.stream[n * self.chunk:]
        return out

    def _chunk(self, device, progress):
        return pack([Piece([t for t, _, _ in c], [s for _, s, _ in c]) for c in self._chunks()], device)

    def _chunk_masked(self, device, progress):
        pieces, docs = [], []
        for c in self._chunks():
            pieces.append(Piece([t for t, _, _ in c], [s for _, s, _ in c]))
            runs = [1]
            for a, b in zip(c[:-1], c[1:]):
                if a[2] == b[2]:
                    runs[-1] += 1
                else:
                    runs.append(1)
            docs.append(runs)
        return pack(pieces, device, docs)

    def _decompose(self, p: Piece):
        """A sample cut into pieces of 2^k tokens, the largest first (the binary digits of its length), none longer
        than the chunk. A piece with nothing to predict (no answer token after its first) is dropped: a step of
        them would train nothing (one-token pieces, or pieces of prompt alone)."""
        top = self.chunk.bit_length() - 1
        at, n = 0, len(p.ids)

        def put(k):
            nonlocal at
            piece = Piece(p.ids[at:at + (1 << k)], p.scored[at:at + (1 << k)])
            if any(piece.scored[1:]):
                self.buckets.setdefault(k, []).append(piece)
            at += 1 << k

        while n - at >= 2 << top:
            put(top)
        rest = n - at
        for k in range(rest.bit_length() - 1, -1, -1):
            if rest & (1 << k):
                put(k)

    def _buckets(self, device, progress):
        top = self.chunk.bit_length() - 1
        while not self.buckets or sum(len(v) << k for k, v in self.buckets.items()) < 4 * self.tokens:
            self._decompose(self.draw())
        ks = sorted(k for k in self.buckets if k <= top and self.buckets[k])
        odds = grow_odds(len(ks), progress)
        k = self.rng.choices(ks, weights=[o * len(self.buckets[kk]) for o, kk in zip(odds, ks)])[0]
        want = max(1, self.tokens >> k)
        while len(self.buckets[k]) < want:
            self._decompose(self.draw())
        pieces, self.buckets[k] = self.buckets[k][:want], self.buckets[k][want:]
        return pack(pieces, device)

    def _buckets_whole(self, device, progress):
        mass = {}  # bucket -> tokens it holds

        def add():
            p = self.draw()
            k = (len(p.ids) - 1).bit_length()
            self.buckets.setdefault(k, []).append(p)
            mass[k] = mass.get(k, 0) + len(p.ids)

        for k, v in self.buckets.items():
            mass[k] = sum(len(p.ids) for p in v)
        while sum(mass.values()) < 4 * self.tokens or max(mass.values()) < self.tokens:
            add()
        # a bucket is drawn once it holds a whole step, so a rare one (the shortest lengths) waits and fills up
        # rather than drawing thousands of samples for one step
        ks = sorted(k for k, m in mass.items() if m >= self.tokens)
        odds = grow_odds(len(ks), progress)
        k = self.rng.choices(ks, weights=[o * mass[kk] for o, kk in zip(odds, ks)])[0]
        pieces, n = [], 0
        while n < self.tokens:
            p = self.buckets[k].pop(0)
            pieces.append(p)
            n += len(p.ids)
        return pack(pieces, device)
