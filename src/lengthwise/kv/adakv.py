"""Ada-KV (Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM
Inference", 2024), here as Ada-SnapKV: head-wise budgets.

Every kv head is scored as SnapKV scores it (kv/snapkv.py: the observation window's attention, pooled), and the
budget is spent across the heads of a layer together: of each sequence's Hkv x S cached tokens, the Hkv x budget
best are kept, wherever they fall, so a head whose attention is spread keeps more than one whose attention is
sharp. A safeguard keeps each head's best `alpha` x budget first (kvpress's AdaKVPress: alpha_safeguard=0.2).

The heads then hold different counts, and the cache stores them so (kv/headwise.py): each (layer, sequence, kv
head) its own region, sized after prefill to what it keeps. kvpress masks the dropped tokens instead, which frees
nothing. The budget is set once, over the whole context: one prefill forward (not chunked, so the prefill holds
the whole context, as kvpress's does) and no eviction in decode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from .policy import Cached
from .snapkv import SnapKV


@dataclass(frozen=True)
class AdaKV(SnapKV):
    """SnapKV's options and score (window, kernel; a budget of tokens below the window is refused), its budget
    spent per layer across the kv heads."""
    name: ClassVar[str] = "adakv"
    headwise: ClassVar[bool] = True
    chunked: ClassVar[bool] = False
    alpha: float = 0.2

    def check(self) -> None:
        super().check()
        if not 0 <= self.alpha <= 1:
            raise LengthwiseError(f"adakv: alpha (the share of its budget each head keeps first) must be in [0, 1], "
                                  f"got {self.alpha:g}")
        if self.every:
            raise LengthwiseError("adakv sets its head budgets once, at the end of prefill: drop every= "
                                  "(or use snapkv, h2o or streaming to evict during decode)")

    def compress_heads(self, cache, layer, seqs, budgets, q, cu_q, scale=None) -> None:
        compress_headwise(self, cache, layer, seqs, budgets, q, cu_q, scale)


def compress_headwise(policy: AdaKV, cache, layer: int, seqs: torch.Tensor, budgets: torch.Tensor,
                      q: torch.Tensor, cu_q: torch.Tensor, scale: float | None = None) -> None:
    """Keep at most Hkv x budgets [B'] tokens of each sequence seqs [B'] in one layer of a head-wise cache, the
    best by the policy's score over all its kv heads together, each head's best alpha x budget first; each head's
    kept tokens compacted to the front of its region, in cache order. q [T, H, D], cu_q [B'+1]: this forward's."""
    from ..attention.weights import last_queries, window_weights
    from .headwise import gather_heads, keep_heads
    Hkv = cache.Hkv
    over = cache.head_counts(layer, seqs).sum(1) > budgets * Hkv
    if not bool(over.any()):
        return
    rows = over.nonzero().squeeze(1)
    seqs, budgets = seqs[rows], budgets[rows]
    B = len(seqs)
    heads, slots, valid = gather_heads(cache, layer, seqs)  # [B, Hkv], [B Hkv, S], [B Hkv, S]
    S = slots.shape[1]
    k = cache.keys(layer, slots)  # [B Hkv, S, 1, D]
    pos = cache.pos[layer][slots]  # [B Hkv, S, 1]
    # each (sequence, kv head) scored alone, as a sequence of one kv head and its G query heads
    T, H, D = q.shape
    G = H // Hkv
    qw = last_queries(q, cu_q, rows, policy.observe)  # [B, w, H, D]
    qv = qw.view(B, -1, Hkv, G, D).permute(0, 2, 1, 3, 4).reshape(B * Hkv, -1, G, D)
    c = Cached(k, cache.values(layer, slots), pos.long(), valid, budgets.repeat_interleave(Hkv), layer,
               cache.n_layers, queries=qv)
    c.weights = window_weights(qv, k, valid, D ** -0.5 if scale is None else scale)  # [B Hkv, G, w, S]
    sc = policy.score(c).float().view(B, Hkv, S)
    valid3 = valid.view(B, Hkv, S)
    sc = sc.masked_fill(~valid3, -math.inf)
    if cache.context is not None:  # the question and what follows it stay, in every head
        past = pos.view(B, Hkv, S) >= cache.context[seqs][:, None, None]
        sc = sc.masked_fill(past & valid3, math.inf)
    # the safeguard: each head's best floor(alpha x budget), at least 1, first (ties to the older token)
    safe = (budgets.double() * policy.alpha).floor().long()  # [B]
    if policy.alpha > 0:  # kvpress: at least one, where the budget keeps any
        safe = torch.where(budgets > 0, safe.clamp(min=1), 0)
    order = sc.sort(dim=-1, descending=True, stable=True).indices  # [B, Hkv, S]
    idx = torch.arange(S, device=sc.device)
    rank = torch.empty_like(order).scatter_(-1, order, idx.expand_as(order))
    sc = torch.where((rank < safe[:, None, None]) & valid3, math.inf, sc)
    # then the best Hkv x budget of the sequence's heads together; a stable sort over [head, slot] breaks ties
    # by kv head, then cache order
    total = budgets * Hkv  # [B]
    flat = sc.reshape(B, Hkv * S)
    K = int(total.max())
    top = flat.sort(dim=-1, descending=True, stable=True).indices[:, :K]  # [B, K]
    chosen = (torch.arange(K, device=sc.device)[None, :] < total[:, None]) & (flat.gather(1, top) > -math.inf)
    keep = torch.zeros(B, Hkv * S, dtype=torch.bool, device=sc.device).scatter_(1, top, chosen)
    keep_heads(cache, layer, heads, slots, keep.view(B, Hkv, S))
