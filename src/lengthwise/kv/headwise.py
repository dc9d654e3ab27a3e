"""A cache with a length per (layer, sequence, kv head): heads keep different counts, and free real memory.

Head-wise budgets (Ada-KV, kv/adakv.py) let one kv head keep most of a context and another a few tokens. A cache
with one count per (layer, sequence) would have to size every head's share to the largest, which saves nothing
(kvpress's head-wise presses mask the dropped tokens, and its code says so). Here every (sequence, kv head) is a
sequence of its own, with one kv head: the evicting cache of kv/cache.py over Hkv x B of them, ordered kv head
first (virtual sequence h * B + b), so each has its own region, count and positions in every layer, and `shrink`
sizes each to what that head keeps.

Attention reads it as Hkv x B sequences of G = H / Hkv query heads each (attention/layer.py: a transpose of the
queries, no copy of the cache): every kernel that takes GQA takes it. Outside, the cache speaks of real
sequences, as RaggedKVCache does: `length` [B], `context` [B], `plan(seqs, n_new)` with real positions and
cu_q; the key side of its AttnMeta (cu_k, used_k, [L, Hkv * B'] and [L, Hkv * B' + 1]) and its slots
[L, Hkv * T] are per virtual sequence, kv head first.
"""
from __future__ import annotations

import torch

from ..attention import AttnMeta
from ..errors import LengthwiseError
from ..positions.gate import Lengths
from .cache import RaggedKVCache


class HeadwiseKVCache(RaggedKVCache):
    """An evicting cache whose every (layer, sequence, kv head) has its own count of cached tokens.

    kept [L, Hkv * B], start_l and capacity_l likewise: virtual sequence h * B + b is sequence b's kv head h.
    Pools hold [S_l, 1, D]. capacity [B] is each sequence's largest head region."""
    headwise = True

    def __init__(self, n_layers: int, capacities: list[int], n_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device, prompts: list[int] | None = None, head_capacities: list[list[list[int]]] | None = None,
                 kv_dtype: str = "auto"):
        """capacities [B]: each sequence's largest region; head_capacities [L][Hkv][B]: each (layer, kv head)'s
        region per sequence (None: capacities everywhere), so a head that keeps little never holds more."""
        B, Hkv = len(capacities), n_kv_heads
        prompts = list(capacities) if prompts is None else list(prompts)
        hc = [[list(capacities)] * Hkv] * n_layers if head_capacities is None else head_capacities
        lc = [[c for row in layer for c in row] for layer in hc]  # [L][Hkv B], kv head first
        super().__init__(n_layers, list(capacities) * Hkv, 1, head_dim, dtype, device, prompts=prompts * Hkv,
                         evicting=True, layer_capacities=lc, kv_dtype=kv_dtype)
        self.B, self.Hkv = B, Hkv
        dev = self.kept.device
        self.length = torch.zeros(B, dtype=torch.int64, device=dev)
        self.prompt_len = torch.tensor(prompts, dtype=torch.int64, device=dev)
        self.capacity = torch.tensor(capacities, dtype=torch.int64, device=dev)
        self.planned = Lengths(self.prompt_len, self.prompt_max, self.max_capacity)

    def heads_of(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs [B'] -> their virtual sequences [Hkv, B']: row h is kv head h of each."""
        return torch.arange(self.Hkv, device=seqs.device)[:, None] * self.B + seqs[None, :]

    def head_counts(self, layer: int, seqs: torch.Tensor) -> torch.Tensor:
        """[B', Hkv]: the tokens each kv head of seqs holds in one layer."""
        return self.kept[layer, self.heads_of(seqs)].t()

    def plan(self, seqs: torch.Tensor, n_new: torch.Tensor):
        """Reserve n_new [B'] slots for seqs [B'] (ascending) in every kv head's region of every layer.

        -> slots [L, Hkv * T] (kv head first, then the forward's packed tokens), positions [T] and an AttnMeta
        whose cu_q [B'+1] is the real sequences' and whose cu_k [L, Hkv B' + 1] and used_k [L, Hkv B'] are the
        virtual ones'."""
        old = self.length[seqs]
        V = self.heads_of(seqs).reshape(-1)  # [Hkv B'], ascending: kv head first
        vn = n_new.repeat(self.Hkv)
        held = self.kept[:, V]  # [L, Hkv B']
        new_len = held + vn
        if bool((new_len > self.capacity_l[:, V]).any()):
            raise LengthwiseError("KV cache region overflow: a sequence outgrew the space reserved for it")
        cu_q = torch.zeros(len(seqs) + 1, dtype=torch.int32, device=seqs.device)
        cu_q[1:] = torch.cumsum(n_new, 0)
        offset = torch.arange(int(cu_q[-1]), device=seqs.device) - torch.repeat_interleave(cu_q[:-1].long(), n_new)
        positions = torch.repeat_interleave(old, n_new) + offset  # [T]
        start = self.start_l[:, V]  # [L, Hkv B']
        slots = torch.repeat_interleave(start + held, vn, dim=-1) + offset.repeat(self.Hkv)  # [L, Hkv T]
        p32 = positions.repeat(self.Hkv).to(torch.int32)[:, None]
        for layer in range(self.n_layers):
            self.pos[layer][slots[layer]] = p32
        self.kept[:, V] = new_len
        cu_k = torch.cat([start, start[:, -1:] + self.capacity_l[:, V[-1:]]], dim=1).to(torch.int32)
        meta = AttnMeta(cu_q, int(n_new.max()), cu_k, int(new_len.max()), new_len.to(torch.int32))
        self.planned = Lengths(self.prompt_len[seqs], self.prompt_max, self.max_capacity, old + n_new)
        self.length[seqs] = old + n_new
        return slots, positions, meta

    def plan_decode_all(self):
        """One new token for every sequence, in every kv head's region, with no host sync."""
        B = self.B
        positions = self.length.clone()  # [B]
        slots = self.start_l + self.kept  # [L, Hkv B]
        p32 = positions.repeat(self.Hkv).to(torch.int32)[:, None]
        for layer in range(self.n_layers):
            self.pos[layer][slots[layer]] = p32
        self.kept += 1
        cu_q = torch.arange(B + 1, dtype=torch.int32, device=self.length.device)
        cu_k = torch.cat([self.start_l, self.start_l[:, -1:] + self.capacity_l[:, -1:]], dim=1).to(torch.int32)
        meta = AttnMeta(cu_q, 1, cu_k, self.max_capacity, self.kept.to(torch.int32))
        self.planned = Lengths(self.prompt_len, self.prompt_max, self.max_capacity, positions + 1)
        self.length += 1
        return slots, positions, meta

    def shrink(self, need: torch.Tensor) -> None:
        """need [L, Hkv * B]: every kv head's region sized to what it keeps plus what is still to come."""
        super().shrink(need)
        self.capacity = self.capacity_l.view(self.n_layers, self.Hkv, self.B).amax((0, 1))
        self.max_capacity = int(self.capacity.max())

    def region_bytes(self) -> list[int]:
        """Each sequence's share of nbytes: its kv heads' regions in every layer."""
        per_head = torch.tensor(super().region_bytes(), dtype=torch.int64)
        return per_head.view(self.Hkv, self.B).sum(0).tolist()


def attend_headwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: HeadwiseKVCache, layer: int,
                    slots: torch.Tensor, meta: AttnMeta, mask, backend, scale: float) -> torch.Tensor:
    """One layer's attention over a head-wise cache: q [T, H, D], the new keys and values [T, Hkv, D] written at
    slots [Hkv * T]; meta: this layer's (real cu_q, virtual cu_k and used_k) -> [T, H, D]."""
    from dataclasses import replace
    from ..attention import attend
    T, H, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    K, Vv = cache.write(layer, slots, k.transpose(0, 1).reshape(Hkv * T, 1, D), v.transpose(0, 1).reshape(Hkv * T, 1, D))
    qv = q.view(T, Hkv, G, D).transpose(0, 1).reshape(Hkv * T, G, D)  # virtual sequence h * B' + b: head h of b
    heads = torch.arange(Hkv, device=q.device, dtype=meta.cu_q.dtype)[:, None] * T
    cu_q = torch.cat([(meta.cu_q[None, :-1] + heads).reshape(-1), meta.cu_q[-1:] + (Hkv - 1) * T])
    y = attend(qv, K, Vv, replace(meta, cu_q=cu_q), mask, backend, scale)  # [Hkv T, G, D]
    return y.view(Hkv, T, G, D).transpose(0, 1).reshape(T, H, D)


def gather_heads(cache: HeadwiseKVCache, layer: int, seqs: torch.Tensor):
    """One layer's cached tokens of seqs [B'], every kv head apart -> heads [B', Hkv] (their virtual sequences),
    slots [B' Hkv, S] and valid [B' Hkv, S], padded past each head's count."""
    heads = cache.heads_of(seqs).t()  # [B', Hkv]
    nv = cache.kept[layer, heads.reshape(-1)]  # [B' Hkv]
    idx = torch.arange(int(nv.max()), device=nv.device)
    valid = idx[None, :] < nv[:, None]
    start = cache.start_l[layer, heads.reshape(-1)][:, None]
    return heads, torch.where(valid, start + idx[None, :], start), valid


def keep_heads(cache: HeadwiseKVCache, layer: int, heads: torch.Tensor, slots: torch.Tensor,
               keep: torch.Tensor) -> None:
    """Keep, of each (sequence, kv head) heads [B', Hkv], the tokens keep [B', Hkv, S] marks (at slots
    [B' Hkv, S]), compacted to the front of the head's region in cache order; its count becomes theirs."""
    B, Hkv, S = keep.shape
    b, h, s = keep.nonzero(as_tuple=True)  # by sequence, head, then cache order
    at = keep.long().cumsum(-1) - 1  # each kept token's place in its head's region
    dst = cache.start_l[layer, heads[b, h]] + at[b, h, s]
    cache.move(layer, dst, slots.view(B, Hkv, S)[b, h, s][:, None])
    cache.kept[layer, heads.reshape(-1)] = keep.sum(-1).reshape(-1)
