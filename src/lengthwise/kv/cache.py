"""A ragged KV cache: one pool per layer, each sequence owning a region sized to its own need.

Sequence i owns slots [start_i, start_i + capacity_i) and has used length_i of them. Nothing is
padded to a batch maximum; attention reads exactly length_i keys per sequence (FlashAttention's
seqused_k), so prefill, chunked prefill and decode are one code path.
"""
from __future__ import annotations

import os

import torch

from ..attention import AttnMeta
from ..positions.gate import Lengths
from ..errors import LengthwiseError


def _check_fits(nbytes: int, tokens: int, device) -> None:
    """A cache that cannot fit is a one-line error before any allocation, not an out-of-memory traceback."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free = torch.cuda.mem_get_info(dev)[0]
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not every platform says
            return
    if nbytes > free:
        raise LengthwiseError(f"the KV cache for {tokens} tokens (prompts plus new tokens) needs {nbytes / 2**30:.1f} GiB "
                              f"and {free / 2**30:.1f} GiB is free on {dev}: lower max_new_tokens or the prompt lengths")


class RaggedKVCache:
    """Sequence i owns slots [start_i, start_i + capacity_i) of every layer's pool.

    length [B] counts the tokens each sequence has seen: the next token's position. Without eviction every
    layer holds all of them, in order, so a token's slot is start + position. With an evicting policy
    (evicting=True) each (layer, sequence) has its own count of cached tokens, kept [L, B], and each slot its
    token's position, pos [L, S, Hkv] (per kv head: heads may keep different tokens). Regions hold
    [L, S, Hkv, D]; per-head lengths would make a region per (sequence, kv head) with the same pools.
    """

    def __init__(self, n_layers: int, capacities: list[int], n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str, far_keys: bool = False,
                 prompts: list[int] | None = None, evicting: bool = False,
                 layer_capacities: list[list[int]] | None = None, scores: bool = False):
        """prompts: each sequence's prompt length, which a length-gated position scheme (beyond=true) keys on
        for the sequence's whole life; None: the capacities (a sequence that may outgrow the trained context
        is treated as one that does). evicting: a policy may drop tokens (kept and pos are tracked).
        layer_capacities [L][B]: an evicting cache's regions per layer, where a policy gives layers budgets of
        their own (PyramidKV); each layer's pool is then sized to its own regions. scores: keep an
        accumulated-attention score per cached token and kv head (H2O, A2SF), compacted with the tokens."""
        cap = torch.tensor(capacities, dtype=torch.int64)
        prompts = list(capacities) if prompts is None else list(prompts)
        if len(prompts) != len(capacities) or (not evicting and any(p > c for p, c in zip(prompts, capacities))):
            raise LengthwiseError("RaggedKVCache: prompts must give one length per sequence, within its capacity")
        if evicting and far_keys:
            raise LengthwiseError("a KV policy that evicts cannot run with a remap's far keys yet: drop --kv or --positions")
        if layer_capacities is not None and (not evicting or len(layer_capacities) != n_layers):
            raise LengthwiseError("RaggedKVCache: layer_capacities need an evicting cache and one row per layer")
        self.n_layers, self.dtype = n_layers, dtype
        self.prompt_len = torch.tensor(prompts, dtype=torch.int64, device=device)  # [B]
        self.prompt_max = max(prompts, default=0)
        self.capacity = cap.to(device)  # [B]
        self.start = (torch.cumsum(cap, 0) - cap).to(device)  # [B] region starts
        self.length = torch.zeros(len(capacities), dtype=torch.int64, device=device)  # [B]
        self.context = None  # [B] where set: tokens past it are never evicted (the question, the answer)
        self.kept = self.pos = self.acc = None
        self.k_far = None
        per_slot = n_kv_heads * head_dim * dtype.itemsize * (3 if far_keys else 2)
        if not evicting:
            total = int(cap.sum())
            _check_fits(n_layers * total * per_slot, total, device)
            self.k = torch.empty(n_layers, total, n_kv_heads, head_dim, dtype=dtype, device=device)  # [L, S, Hkv, D]
            self.v = torch.empty_like(self.k)
            # keys rotated for a remap's far pass (positions/rope.py: Remap), when those differ from k
            self.k_far = torch.empty_like(self.k) if far_keys else None
        else:
            # an evicting cache: each layer a pool of its own, sized to its regions; each slot its token's
            # position per kv head (heads keep different tokens), and each (layer, sequence) its own count
            lc = torch.tensor(layer_capacities if layer_capacities is not None else [capacities] * n_layers,
                              dtype=torch.int64)  # [L, B]
            totals = lc.sum(1).tolist()
            per_slot += n_kv_heads * (4 + (4 if scores else 0))
            _check_fits(sum(totals) * per_slot, max(totals, default=0), device)
            self.k = [torch.empty(t, n_kv_heads, head_dim, dtype=dtype, device=device) for t in totals]
            self.v = [torch.empty_like(k) for k in self.k]
            self.pos = [torch.zeros(t, n_kv_heads, dtype=torch.int32, device=device) for t in totals]
            self.acc = [torch.zeros(t, n_kv_heads, dtype=torch.float32, device=device) for t in totals] if scores else None
            self.capacity_l = lc.to(device)  # [L, B]
            self.start_l = (torch.cumsum(lc, 1) - lc).to(device)  # [L, B]
            self.kept = torch.zeros(n_layers, len(capacities), dtype=torch.int64, device=device)
        self.max_capacity = int(cap.max())
        self.cu_k_all = torch.cat([self.start, self.start[-1:] + self.capacity[-1:]]).to(torch.int32)  # [B+1]
        self.planned = Lengths(self.prompt_len, self.prompt_max, self.max_capacity)  # of the last plan

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds on its device (keys, values, far keys, positions)."""
        parts = [self.k, self.v, self.k_far, self.pos, self.acc]
        return sum(t.untyped_storage().nbytes() for p in parts if p is not None for t in (p if isinstance(p, list) else [p]))

    def shrink(self, need: torch.Tensor) -> None:
        """An evicting cache after prefill: give each (layer, sequence) a region of need [L, B] slots (at least what
        it keeps) in new, smaller pools, the kept tokens copied over; the prefill's larger pools are freed."""
        need = torch.maximum(need.to(self.kept.device), self.kept)
        starts = torch.cumsum(need, 1) - need  # [L, B]
        for layer in range(self.n_layers):
            kept = self.kept[layer]  # [B]
            total = int(need[layer].sum())
            n = int(kept.sum())
            seq = torch.repeat_interleave(torch.arange(kept.numel(), device=kept.device), kept)  # [n]
            off = torch.arange(n, device=kept.device) - torch.repeat_interleave(torch.cumsum(kept, 0) - kept, kept)
            src = self.start_l[layer][seq] + off
            dst = starts[layer][seq] + off
            for name in ("k", "v", "pos", "acc"):
                pools = getattr(self, name)
                if pools is None:
                    continue
                old = pools[layer]
                new = (torch.zeros if name in ("pos", "acc") else torch.empty)(
                    (total,) + tuple(old.shape[1:]), dtype=old.dtype, device=old.device)
                new[dst] = old[src]
                pools[layer] = new
        self.capacity_l, self.start_l = need, starts
        self.capacity = need.max(0).values
        self.max_capacity = int(self.capacity.max())

    def region_bytes(self) -> list[int]:
        """Each sequence's share of nbytes: the storage its regions hold in every layer."""
        if self.kept is None:
            share = self.capacity.double() / float(self.capacity.sum())
        else:
            per_layer = torch.tensor([float(t.untyped_storage().nbytes()) for t in self.k], dtype=torch.float64,
                                     device=self.capacity_l.device)
            slots = self.capacity_l.double()  # [L, B]
            share = (slots / slots.sum(1, keepdim=True).clamp(min=1) * per_layer[:, None]).sum(0) / per_layer.sum()
        return [round(x) for x in (share * self.nbytes).tolist()]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one layer's new keys and values [T, Hkv, D] at slots [T]; -> the layer's pools to attend over."""
        self.k[layer][slots] = k
        self.v[layer][slots] = v
        return self.k[layer], self.v[layer]

    def write_far(self, layer: int, slots: torch.Tensor, kf: torch.Tensor) -> torch.Tensor:
        self.k_far[layer, slots] = kf
        return self.k_far[layer]

    def plan_decode_all(self):
        """One new token for every sequence, with no host sync, so a CUDA graph can capture it.

        Same contract as plan(); the bound max_k is each region's capacity rather than its use.
        """
        if self.kept is not None:
            return self._plan_decode_kept()
        B = self.length.numel()
        positions = self.length.clone()  # [B]
        slots = self.start + positions  # [B]
        cu_q = torch.arange(B + 1, dtype=torch.int32, device=self.length.device)
        meta = AttnMeta(cu_q, 1, self.cu_k_all, self.max_capacity, (positions + 1).to(torch.int32))
        self.planned = Lengths(self.prompt_len, self.prompt_max, self.max_capacity)
        self.length += 1
        return slots, positions, meta

    def _plan_decode_kept(self):
        """plan_decode_all for an evicting cache: each layer appends after what it kept, with no host sync (the
        caller sized the regions for every step it plans: generate's capacities)."""
        B = self.length.numel()
        positions = self.length.clone()  # [B]
        slots = self.start_l + self.kept  # [L, B]
        p32 = positions.to(torch.int32)[:, None]
        for layer in range(self.n_layers):
            self.pos[layer][slots[layer]] = p32
            if self.acc is not None:  # a scalar fill: a python value assigned by index would copy from the host
                self.acc[layer].index_fill_(0, slots[layer], 0.0)
        self.kept += 1
        cu_q = torch.arange(B + 1, dtype=torch.int32, device=self.length.device)
        cu_k = torch.cat([self.start_l, self.start_l[:, -1:] + self.capacity_l[:, -1:]], dim=1).to(torch.int32)
        meta = AttnMeta(cu_q, 1, cu_k, self.max_capacity, self.kept.to(torch.int32))
        self.planned = Lengths(self.prompt_len, self.prompt_max, self.max_capacity, positions + 1)
        self.length += 1
        return slots, positions, meta

    def plan(self, seqs: torch.Tensor, n_new: torch.Tensor):
        """Reserve n_new [B'] slots for the cache sequences seqs [B'] (ascending).

        Returns slots [T] (where the new keys go), positions [T] and the AttnMeta for attending
        over each sequence's whole cached prefix plus the new tokens. An evicting cache gives each layer its
        own: slots [L, T] and meta.used_k [L, B'].
        """
        old = self.length[seqs]
        held = old if self.kept is None else self.kept[:, seqs]  # [B'] or [L, B'] tokens cached now
        new_len = held + n_new
        room = self.capacity[seqs] if self.kept is None else self.capacity_l[:, seqs]
        if bool((new_len > room).any()):
            raise LengthwiseError("KV cache region overflow: a sequence outgrew the space reserved for it")
        cu_q = torch.zeros(len(seqs) + 1, dtype=torch.int32, device=seqs.device)
        cu_q[1:] = torch.cumsum(n_new, 0)
        offset = torch.arange(int(cu_q[-1]), device=seqs.device) - torch.repeat_interleave(cu_q[:-1].long(), n_new)
        positions = torch.repeat_interleave(old, n_new) + offset  # [T]
        if self.kept is None:
            start = self.start[seqs]
            slots = torch.repeat_interleave(start, n_new) + positions  # [T]
            cu_k = torch.cat([start, (start[-1] + self.capacity[seqs[-1]]).view(1)]).to(torch.int32)
        else:  # each layer appends after what it kept, in its own pool
            start = self.start_l[:, seqs]  # [L, B']
            slots = torch.repeat_interleave(start + held, n_new, dim=-1) + offset  # [L, T]
            p32 = positions.to(torch.int32)[:, None]
            for layer in range(self.n_layers):
                self.pos[layer][slots[layer]] = p32
                if self.acc is not None:
                    self.acc[layer][slots[layer]] = 0.0
            self.kept[:, seqs] = new_len
            cu_k = torch.cat([start, start[:, -1:] + self.capacity_l[:, seqs[-1:]]], dim=1).to(torch.int32)  # [L, B'+1]
        meta = AttnMeta(cu_q, int(n_new.max()), cu_k, int(new_len.max()), new_len.to(torch.int32))
        # the gate's lengths: the cache's largest prompt and region, so a subset needs no sync
        self.planned = Lengths(self.prompt_len[seqs], self.prompt_max, self.max_capacity,
                               None if self.kept is None else old + n_new)
        self.length[seqs] = old + n_new
        return slots, positions, meta
