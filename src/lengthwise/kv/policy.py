"""KV policies: what the cache keeps. A policy scores the cached tokens; the cache keeps the best within a budget.

In the spirit of kvpress's ScorerPress: a policy only says how much to keep (`keep`, or `layer_keep` for
budgets per layer) and how to rank what is cached (`score`); `after_attention` does the keeping for every
policy alike. It gathers each sequence's cached keys of one layer into a `Cached` view, asks for scores
[B, Hkv, S], keeps the top `keep` tokens of every kv head (in their cache order), and compacts them to the
front of the sequence's region. The cache is allocated for the budget, not the prompt (kv/cache.py), so what
is dropped is memory never held.

A policy acts at the end of every prefill chunk (`generate.prefill` cuts long prompts in chunks, so the prefill
peak is the budget plus one chunk) and, if `every` > 0, after every `every`-th decode step. What a policy
reads, it asks for, and only it pays:
- `observe` > 0: the last `observe` queries of the forward that evicts and their attention weights over the
  cached keys (attention/weights.py);
- `accumulate`: a running sum of the attention every cached token has received, from every query of every
  forward (prefill chunks and decode steps), decayed by `decay` per token (H2O, A2SF); the cache stores it
  per token and kv head and compacts it with the tokens.

Where the cache knows where each prompt's context ends (`RaggedKVCache.context`, set when the question is
kept out of compression), the tokens past it are never evicted: the budget covers the context only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import LengthwiseError
from ..options import check_fields, spec_of


@dataclass
class Cached:
    """One layer's cached tokens of the sequences a policy ranks, padded past each sequence's count.

    keys, values [B, S, Hkv, D] (RoPE applied), positions [B, S, Hkv] int64, valid [B, S] bool, budgets [B]
    (what each keeps); with `observe`: queries [B, w, H, D] and weights [B, H, w, S] (softmax over the valid
    keys); with `accumulate`: attention [B, Hkv, S] float32, the accumulated scores; layer and n_layers."""
    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    budgets: torch.Tensor
    layer: int = 0
    n_layers: int = 1
    queries: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    attention: torch.Tensor | None = None

    @property
    def n_kv_heads(self) -> int:
        return self.keys.shape[2]

    def per_kv_head(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, S] over query heads -> [B, Hkv, S]: the mean over each kv head's group (GQA)."""
        B, H, S = x.shape
        return x.view(B, self.n_kv_heads, H // self.n_kv_heads, S).mean(2)

    def newest(self, count: torch.Tensor) -> torch.Tensor:
        """count [B] -> [B, Hkv, S] bool: each sequence's `count` newest tokens (by position)."""
        p = self.positions.transpose(1, 2)  # [B, Hkv, S]
        top = torch.where(self.valid[:, None, :], p, -1).amax(-1, keepdim=True)  # [B, Hkv, 1]
        return self.valid[:, None, :] & (p > top - count[:, None, None])


@dataclass(frozen=True)
class Policy:
    """Base: keep everything (the budget is the whole sequence). Subclasses set a budget and a score."""
    name: ClassVar[str] = ""
    observe: ClassVar[int] = 0  # last queries whose attention weights score() needs; 0: none
    accumulate: ClassVar[bool] = False  # score() reads the accumulated attention (Cached.attention)
    chunked: ClassVar[bool] = True  # long prompts prefill in chunks, each ending in an eviction (False: one forward)
    headwise: ClassVar[bool] = False  # kv heads keep counts of their own (kv/headwise.py: a region per head),
    # chosen by compress_heads(cache, layer, seqs, budgets, q, cu_q, scale)
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

    @property
    def decay(self) -> float:
        """With `accumulate`: the factor an accumulated score is multiplied by per token seen since (1: none)."""
        return 1.0

    def keep(self, n: torch.Tensor) -> torch.Tensor:
        """n [B] int64 tokens seen -> [B] tokens each sequence keeps (at most n)."""
        return n

    def layer_keep(self, n: torch.Tensor, n_layers: int) -> torch.Tensor:
        """n [B] -> [L, B]: what each layer keeps; the same everywhere unless the policy says (PyramidKV)."""
        return self.keep(n).expand(n_layers, -1)

    def needs_queries(self, evicting: bool) -> bool:
        """This forward's queries are read after attention (so the fused decode kernel steps aside)."""
        return self.evicts and (self.accumulate or (evicting and self.observe > 0))

    def score(self, c: Cached) -> torch.Tensor:
        """-> scores [B, Hkv, S], higher kept first; padding is masked by the caller."""
        raise NotImplementedError

    def spec(self) -> str:
        """The policy as it parses back: its own options, then `every` where it is not the default."""
        from dataclasses import fields
        return spec_of(self, self.name, {f.name for f in fields(self) if not f.kw_only} - self._unused())

    def _unused(self) -> set:
        return set()


@dataclass(frozen=True)
class Budget(Policy):
    """A policy whose budget is a ratio removed (kvpress's compression_ratio: ratio=0.75 drops 75%) or a
    token count kept; exactly one of the two. ratio=0 removes nothing: the cache is the full one, exactly."""
    ratio: float = -1.0  # -1: not given
    tokens: int = 0

    def check(self) -> None:
        if not (self.ratio == -1 or 0 <= self.ratio < 1):
            raise LengthwiseError(f"{self.name}: ratio must be in [0, 1) (the fraction removed), got {self.ratio:g}")
        if self.tokens < 0:
            raise LengthwiseError(f"{self.name}: tokens (the count kept) must be >= 1, got {self.tokens}")
        if (self.ratio != -1) == (self.tokens > 0):
            raise LengthwiseError(f"{self.name}: give exactly one budget, ratio=R (the fraction removed, 0 <= R < 1) "
                                  "or tokens=N (the count kept, N >= 1; ratio=0 is the full cache)")

    @property
    def evicts(self) -> bool:
        return self.ratio != 0  # ratio=0: nothing removed, so nothing evicts and the cache is the full one

    def keep(self, n: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            return n.clamp(max=self.tokens)
        return (n.double() * (1 - self.ratio)).floor().long().clamp(min=1)  # kvpress: int(n * (1 - ratio))

    def _unused(self) -> set:
        return {"tokens"} if self.ratio != -1 else {"ratio"}


@dataclass(frozen=True)
class Full(Policy):
    """Keep every token: the default, and the cache exactly as without a policy."""
    name: ClassVar[str] = "full"

    @property
    def evicts(self) -> bool:
        return False


def _gather(cache, layer: int, seqs: torch.Tensor, n: torch.Tensor):
    """One layer's cached tokens of seqs [B'] holding n [B'] each -> slots [B', S], valid [B', S]."""
    S = int(n.max())
    idx = torch.arange(S, device=n.device)
    valid = idx[None, :] < n[:, None]  # [B, S]
    start = cache.start_l[layer, seqs][:, None]
    return torch.where(valid, start + idx[None, :], start), valid


def after_attention(policy: Policy, cache, layer: int, seqs: torch.Tensor, budgets: torch.Tensor | None,
                    q: torch.Tensor | None = None, cu_q: torch.Tensor | None = None, scale: float | None = None) -> None:
    """After one layer's attention over this forward's cache sequences seqs [B']: add this forward's attention
    to the accumulated scores (a policy with `accumulate`), then keep at most budgets [B'] tokens of each
    sequence (None: no eviction now). q [T, H, D] and cu_q [B'+1]: this forward's queries."""
    n = cache.kept[layer, seqs]  # [B'] cached now, this forward's tokens included
    if policy.accumulate:
        from ..attention.weights import column_sums
        slots, valid = _gather(cache, layer, seqs, n)
        rows = torch.arange(len(seqs), device=n.device)
        sc = q.shape[-1] ** -0.5 if scale is None else scale
        cs = column_sums(q, cu_q, rows, cache.keys(layer, slots), valid, sc, policy.decay)  # [B', H, S]
        B, H, S = cs.shape
        cs = cs.view(B, cache.k[layer].shape[1], -1, S).mean(2).transpose(1, 2)  # [B', S, Hkv]
        m = (cu_q[1:] - cu_q[:-1]).long()  # queries of this forward per sequence
        old = torch.arange(S, device=n.device)[None, :] < (n - m)[:, None]  # tokens cached before it
        fade = (policy.decay ** m.double()).float()[:, None, None]
        acc = cache.acc[layer]
        acc[slots[valid]] = (torch.where(old[..., None], acc[slots] * fade, 0) + cs)[valid]
    if budgets is not None and getattr(cache, "headwise", False):  # budgets per kv head (kv/headwise.py)
        policy.compress_heads(cache, layer, seqs, budgets, q, cu_q, scale)
    elif budgets is not None:
        compress(policy, cache, layer, seqs, budgets, q, cu_q, scale)
    # then key channels over the tokens kept (ThinK; composed after a token policy, as kvpress's ComposedPress)
    if (budgets is not None and hasattr(policy, "channels") and cache.chan[layer] is None
            and policy.pruned(cache.k[layer].shape[-1]) > 0):
        prune_channels(policy, cache, layer, seqs, q, cu_q)


def prune_channels(policy, cache, layer: int, seqs: torch.Tensor, q: torch.Tensor, cu_q: torch.Tensor) -> None:
    """ThinK (kv/think.py): after the context's forward, choose each sequence's kept key channels per kv head from
    its last `window` queries and its cached keys, and store the layer's keys at those channels from now on."""
    from ..attention.weights import last_rows
    n = cache.kept[layer, seqs]
    slots, valid = _gather(cache, layer, seqs, n)
    idx, ok = last_rows(cu_q, torch.arange(len(seqs), device=n.device), policy.window)
    chan = policy.channels(q[idx.clamp(min=0)], ok, cache.keys(layer, slots), valid)  # [B', Hkv, Dk]
    cache.prune_keys(layer, seqs, chan)


def compress(policy: Policy, cache, layer: int, seqs: torch.Tensor, budgets: torch.Tensor,
             q: torch.Tensor | None = None, cu_q: torch.Tensor | None = None, scale: float | None = None) -> None:
    """Keep at most budgets [B'] tokens of each sequence seqs [B'] in one layer of the cache, chosen by the
    policy's scores per kv head; q [T, H, D] and cu_q [B'+1]: this forward's queries, for a policy with a
    window."""
    n = cache.kept[layer, seqs]  # [B'] cached now, this forward's tokens included
    over = n > budgets
    if not bool(over.any()):
        return
    rows = over.nonzero().squeeze(1)
    seqs, n, budgets = seqs[rows], n[rows], budgets[rows]
    slots, valid = _gather(cache, layer, seqs, n)
    S = slots.shape[1]
    k, v, pos = cache.keys(layer, slots), cache.values(layer, slots), cache.pos[layer][slots]  # [B, S, Hkv, D], [B, S, Hkv]
    c = Cached(k, v, pos.long(), valid, budgets, layer, cache.n_layers)
    if policy.observe:
        from ..attention.weights import last_queries, window_weights
        c.queries = last_queries(q, cu_q, rows, policy.observe)  # [B, w, H, D]
        c.weights = window_weights(c.queries, k, valid, q.shape[-1] ** -0.5 if scale is None else scale)
    if policy.accumulate:
        c.attention = cache.acc[layer][slots].transpose(1, 2)  # [B, Hkv, S]
    scores = policy.score(c).float()  # [B, Hkv, S]
    scores = scores.masked_fill(~valid[:, None, :], -math.inf)
    if cache.context is not None:  # the question and what follows it stay
        past = c.positions.transpose(1, 2) >= cache.context[seqs][:, None, None]
        scores = scores.masked_fill(past & valid[:, None, :], math.inf)
    K = int(budgets.max())
    # best first; a stable sort breaks ties by cache order, so a sequence keeps the same tokens in any batch
    top = scores.sort(dim=-1, descending=True, stable=True).indices[..., :K]  # [B, Hkv, K]
    rank = torch.arange(K, device=n.device)
    chosen = rank[None, None, :] < budgets[:, None, None]
    top = torch.where(chosen, top, S + rank).sort(dim=-1).values.clamp(max=S - 1)  # kept ones in cache order
    sel = top.transpose(1, 2)  # [B, K, Hkv]
    write = rank[None, :] < budgets[:, None]  # [B, K]
    dst = (cache.start_l[layer, seqs][:, None] + rank[None, :])[write]  # [N]
    src = slots[:, :, None].expand(-1, -1, sel.shape[2]).gather(1, sel)[write]  # [N, Hkv]: the kept tokens' slots
    cache.move(layer, dst, src)  # keys, values, their scales, positions and scores, as stored
    cache.kept[layer, seqs] = budgets
