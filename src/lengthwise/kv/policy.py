"""KV policies: what the cache keeps. A policy scores the cached tokens; the cache keeps the best within a budget.

In the spirit of kvpress's ScorerPress: a policy only says how much to keep (`keep`) and how to rank what is
cached (`score`); `compress` does the keeping for every policy alike. It gathers each sequence's cached keys
of one layer, asks for scores [B, Hkv, S], keeps the top `keep` tokens of every kv head (in their cache
order), and compacts them to the front of the sequence's region. The cache is allocated for the budget, not
the prompt (kv/cache.py), so what is dropped is memory never held.

A policy acts at the end of every prefill chunk (`generate.prefill` cuts long prompts in chunks, so the prefill
peak is the budget plus one chunk) and, if `every` > 0, after every `every`-th decode step. A policy that scores
with attention sets `window` to the number of last queries it needs; it then receives those queries and their
attention weights over the cached keys, computed for it alone (attention/weights.py): nobody else pays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from ..options import check_fields, spec_of


@dataclass(frozen=True)
class Policy:
    """Base: keep everything (the budget is the whole sequence). Subclasses set a budget and a score."""
    name: ClassVar[str] = ""
    window: ClassVar[int] = 0  # last queries whose attention weights score() needs; 0: none
    # decode: evict after every `every`-th step (0: the policy acts in prefill only); keyword-only, so it
    # follows each policy's own options
    every: int = field(default=0, kw_only=True)

    def __post_init__(self):
        check_fields(self, self.name, coerce=True)
        if self.every < 0:
            raise LengthwiseError(f"{self.name}: every must be >= 0 (decode steps between evictions; 0: prefill only)")
        self.check()

    def check(self) -> None:
        """Raise LengthwiseError for options out of range."""

    @property
    def evicts(self) -> bool:
        return True

    def keep(self, n: torch.Tensor) -> torch.Tensor:
        """n [B] int64 prompt lengths -> [B] tokens each sequence keeps (at most n)."""
        return n

    def score(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
              queries: torch.Tensor | None, weights: torch.Tensor | None) -> torch.Tensor:
        """keys, values [B, S, Hkv, D] (one layer's cached tokens, RoPE applied; padded past each sequence's
        count), positions [B, S, Hkv] int64, valid [B, S] bool; with `window`: queries [B, w, H, D] and weights
        [B, H, w, S] (softmax over the valid keys) -> scores [B, Hkv, S], higher kept first. Padding is masked
        by the caller."""
        raise NotImplementedError

    def spec(self) -> str:
        """The policy as it parses back: its own options, then `every` where it is not the default."""
        from dataclasses import fields
        return spec_of(self, self.name, {f.name for f in fields(self) if not f.kw_only})


@dataclass(frozen=True)
class Budget(Policy):
    """A policy whose budget is a ratio removed (kvpress's compression_ratio: ratio=0.75 drops 75%) or a
    token count kept; exactly one of the two."""
    ratio: float = 0.0
    tokens: int = 0

    def check(self) -> None:
        if (self.ratio > 0) == (self.tokens > 0):
            raise LengthwiseError(f"{self.name}: give exactly one budget, ratio=R (the fraction removed, 0 < R < 1) "
                                  "or tokens=N (the count kept)")
        if not 0 <= self.ratio < 1 or self.tokens < 0:
            raise LengthwiseError(f"{self.name}: ratio must be in [0, 1) and tokens >= 0, got ratio={self.ratio:g}, "
                                  f"tokens={self.tokens}")

    def keep(self, n: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            return n.clamp(max=self.tokens)
        return (n.double() * (1 - self.ratio)).floor().long().clamp(min=1)  # kvpress: int(n * (1 - ratio))


@dataclass(frozen=True)
class Full(Policy):
    """Keep every token: the default, and the cache exactly as without a policy."""
    name: ClassVar[str] = "full"

    @property
    def evicts(self) -> bool:
        return False


def compress(policy: Policy, cache, layer: int, seqs: torch.Tensor, budgets: torch.Tensor,
             q: torch.Tensor | None = None, cu_q: torch.Tensor | None = None, scale: float | None = None) -> None:
    """Keep at most budgets [B'] tokens of each sequence seqs [B'] in one layer of the cache, chosen by the
    policy's scores per kv head; q [T, H, D] and cu_q [B'+1]: this forward's queries, for a policy with a
    window."""
    n = cache.kept[layer, seqs]  # [B'] cached now, this forward's tokens included
    over = n > budgets
    if not bool(over.any()):
        return
    seqs, n, budgets = seqs[over], n[over], budgets[over]
    S = int(n.max())
    idx = torch.arange(S, device=n.device)
    valid = idx[None, :] < n[:, None]  # [B, S]
    slots = torch.where(valid, cache.start[seqs][:, None] + idx[None, :], cache.start[seqs][:, None])  # [B, S]
    k, v, pos = cache.k[layer][slots], cache.v[layer][slots], cache.pos[layer][slots]  # [B, S, Hkv, D], [B, S, Hkv]
    queries = weights = None
    if policy.window:
        from ..attention.weights import last_queries, window_weights
        rows = over.nonzero().squeeze(1)
        queries = last_queries(q, cu_q, rows, policy.window)  # [B, w, H, D]
        weights = window_weights(queries, k, valid, q.shape[-1] ** -0.5 if scale is None else scale)
    scores = policy.score(k, v, pos.long(), valid, queries, weights).float()  # [B, Hkv, S]
    scores = scores.masked_fill(~valid[:, None, :], -math.inf)
    K = int(budgets.max())
    top = scores.topk(K, dim=-1).indices  # [B, Hkv, K], best first
    rank = torch.arange(K, device=n.device)
    chosen = rank[None, None, :] < budgets[:, None, None]
    top = torch.where(chosen, top, S + rank).sort(dim=-1).values.clamp(max=S - 1)  # kept ones in cache order
    sel = top.transpose(1, 2)  # [B, K, Hkv]
    gk = k.gather(1, sel[..., None].expand(-1, -1, -1, k.shape[-1]))  # [B, K, Hkv, D]
    gv = v.gather(1, sel[..., None].expand(-1, -1, -1, v.shape[-1]))
    gp = pos.gather(1, sel)
    write = rank[None, :] < budgets[:, None]  # [B, K]
    dst = (cache.start[seqs][:, None] + rank[None, :])[write]
    cache.k[layer][dst] = gk[write]
    cache.v[layer][dst] = gv[write]
    cache.pos[layer][dst] = gp[write]
    cache.kept[layer, seqs] = budgets
