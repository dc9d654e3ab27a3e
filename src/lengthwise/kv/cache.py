"""A ragged KV cache: one pool per layer, each sequence owning a region sized to its own need.

Sequence i owns slots [start_i, start_i + capacity_i) and has used length_i of them. Nothing is
padded to a batch maximum; attention reads exactly length_i keys per sequence (FlashAttention's
seqused_k), so prefill, chunked prefill and decode are one code path.

kv_dtype="fp8" stores keys and values as float8 e4m3 with one scale per (token, kv head), bfloat16, in a
tensor beside each pool (quantize/dequantize below): a 64-dim head vector takes 64 + 2 bytes, not 128. A write
quantizes; a read dequantizes to the compute dtype, so the kernels attend as before. Both are plain tensor ops
with no host sync (the CUDA-graph decoder captures them).
"""
from __future__ import annotations

import os

import torch

from ..attention import AttnMeta
from ..positions.gate import Lengths
from ..errors import LengthwiseError


KV_DTYPES = ("auto", "bf16", "fp8")  # auto: the model's dtype; bf16: bfloat16 storage; fp8: e4m3 + scales
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
SCALE_DTYPE = torch.bfloat16  # float32's range: no amax over- or underflows it


def check_kv_dtype(kv_dtype: str | None) -> str:
    """-> the kv_dtype's one spelling; None is auto. A name outside KV_DTYPES is a one-line error."""
    kv_dtype = "auto" if kv_dtype is None else kv_dtype
    if kv_dtype not in KV_DTYPES:
        raise LengthwiseError(f"unknown kv_dtype {kv_dtype!r}: choose auto (the model's dtype), bf16, or fp8 "
                              "(float8 e4m3 with a scale per token and kv head)")
    return kv_dtype


def storage_dtype(kv_dtype: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a cache of this kv_dtype stores its keys and values in, for a model computing in dtype."""
    return {"auto": dtype, "bf16": torch.bfloat16, "fp8": FP8}[check_kv_dtype(kv_dtype)]


def slot_bytes(kv_dtype: str, dtype: torch.dtype, head_dim: int) -> int:
    """Bytes one cached head vector takes: its D elements, plus its scale where fp8."""
    store = storage_dtype(kv_dtype, dtype)
    return head_dim * store.itemsize + (SCALE_DTYPE.itemsize if store == FP8 else 0)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (float8 e4m3 [..., D], scale [...] bfloat16): scale = amax / 448 per vector, rounded to
    bfloat16 first, so x / scale is what is stored; an element that the rounding pushes past 448 saturates."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))  # one rounding, into e4m3, not two
    scale = (x.abs().amax(-1) / FP8_MAX).clamp(min=torch.finfo(SCALE_DTYPE).tiny).to(SCALE_DTYPE)
    q = (x / scale.to(x.dtype)[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float8 [..., D] and scale [...] -> [..., D] in dtype."""
    return q.to(dtype) * scale.to(dtype)[..., None]


def _raw(t: torch.Tensor) -> torch.Tensor:
    """t, or a float8 t as its bytes: indexing kernels for float8 are missing on some devices and torch versions."""
    return t.view(torch.uint8) if t.dtype == FP8 else t


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
                 layer_capacities: list[list[int]] | None = None, scores: bool = False, kv_dtype: str = "auto"):
        """prompts: each sequence's prompt length, which a length-gated position scheme (beyond=true) keys on
        for the sequence's whole life; None: the capacities (a sequence that may outgrow the trained context
        is treated as one that does). evicting: a policy may drop tokens (kept and pos are tracked).
        layer_capacities [L][B]: an evicting cache's regions per layer, where a policy gives layers budgets of
        their own (PyramidKV); each layer's pool is then sized to its own regions. scores: keep an
        accumulated-attention score per cached token and kv head (H2O, A2SF), compacted with the tokens.
        kv_dtype: what keys and values are stored in (KV_DTYPES); dtype stays the compute dtype reads return."""
        cap = torch.tensor(capacities, dtype=torch.int64)
        prompts = list(capacities) if prompts is None else list(prompts)
        if len(prompts) != len(capacities) or (not evicting and any(p > c for p, c in zip(prompts, capacities))):
            raise LengthwiseError("RaggedKVCache: prompts must give one length per sequence, within its capacity")
        if evicting and far_keys:
            raise LengthwiseError("a KV policy that evicts cannot run with a remap's far keys yet: drop --kv or --positions")
        if layer_capacities is not None and (not evicting or len(layer_capacities) != n_layers):
            raise LengthwiseError("RaggedKVCache: layer_capacities need an evicting cache and one row per layer")
        self.n_layers, self.dtype, self.kv_dtype = n_layers, dtype, check_kv_dtype(kv_dtype)
        self.store_dtype = store = storage_dtype(self.kv_dtype, dtype)
        self.quantized = store == FP8  # a scale per (slot, kv head) beside each pool: k_scale, v_scale, k_far_scale
        self.prompt_len = torch.tensor(prompts, dtype=torch.int64, device=device)  # [B]
        self.prompt_max = max(prompts, default=0)
        self.capacity = cap.to(device)  # [B]
        self.start = (torch.cumsum(cap, 0) - cap).to(device)  # [B] region starts
        self.length = torch.zeros(len(capacities), dtype=torch.int64, device=device)  # [B]
        self.context = None  # [B] where set: tokens past it are never evicted (the question, the answer)
        self.kept = self.pos = self.acc = None
        self.chan = None  # an evicting cache's key channels kept per layer (ThinK): None, or [B, Hkv, Dk] per layer
        self.drop = self.k_rest = self.rest_start = self.ctx_len = None  # ThinK: the others, and later keys' share
        self.k_far = self.k_scale = self.v_scale = self.k_far_scale = None
        per_slot = n_kv_heads * slot_bytes(self.kv_dtype, dtype, head_dim) * (3 if far_keys else 2)
        if not evicting:
            total = int(cap.sum())
            _check_fits(n_layers * total * per_slot, total, device)
            self.k = torch.empty(n_layers, total, n_kv_heads, head_dim, dtype=store, device=device)  # [L, S, Hkv, D]
            self.v = torch.empty_like(self.k)
            # keys rotated for a remap's far pass (positions/rope.py: Remap), when those differ from k
            self.k_far = torch.empty_like(self.k) if far_keys else None
            if self.quantized:  # [L, S, Hkv]
                self.k_scale, self.v_scale = (torch.zeros(n_layers, total, n_kv_heads, dtype=SCALE_DTYPE, device=device)
                                              for _ in range(2))
                self.k_far_scale = torch.zeros_like(self.k_scale) if far_keys else None
        else:
            # an evicting cache: each layer a pool of its own, sized to its regions; each slot its token's
            # position per kv head (heads keep different tokens), and each (layer, sequence) its own count
            lc = torch.tensor(layer_capacities if layer_capacities is not None else [capacities] * n_layers,
                              dtype=torch.int64)  # [L, B]
            totals = lc.sum(1).tolist()
            per_slot += n_kv_heads * (4 + (4 if scores else 0))
            _check_fits(sum(totals) * per_slot, max(totals, default=0), device)
            self.k = [torch.empty(t, n_kv_heads, head_dim, dtype=store, device=device) for t in totals]
            self.v = [torch.empty_like(k) for k in self.k]
            if self.quantized:  # [S_l, Hkv] per layer
                self.k_scale, self.v_scale = ([torch.zeros(t, n_kv_heads, dtype=SCALE_DTYPE, device=device)
                                               for t in totals] for _ in range(2))
            self.pos = [torch.zeros(t, n_kv_heads, dtype=torch.int32, device=device) for t in totals]
            self.acc = [torch.zeros(t, n_kv_heads, dtype=torch.float32, device=device) for t in totals] if scores else None
            self.capacity_l = lc.to(device)  # [L, B]
            self.start_l = (torch.cumsum(lc, 1) - lc).to(device)  # [L, B]
            self.kept = torch.zeros(n_layers, len(capacities), dtype=torch.int64, device=device)
            self.chan = [None] * n_layers
        self.max_capacity = int(cap.max())
        self.cu_k_all = torch.cat([self.start, self.start[-1:] + self.capacity[-1:]]).to(torch.int32)  # [B+1]
        self.planned = Lengths(self.prompt_len, self.prompt_max, self.max_capacity)  # of the last plan

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds on its device (keys, values, far keys, their fp8 scales, positions, scores)."""
        parts = [self.k, self.v, self.k_far, self.k_scale, self.v_scale, self.k_far_scale, self.pos, self.acc, self.k_rest]
        return sum(t.untyped_storage().nbytes() for p in parts if p is not None
                   for t in (p if isinstance(p, list) else [p]) if t is not None)

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
            for name in self.PER_SLOT:
                pools = getattr(self, name)
                if pools is None:
                    continue
                old = pools[layer]
                new = (torch.empty if name in ("k", "v") else torch.zeros)(
                    (total,) + tuple(old.shape[1:]), dtype=old.dtype, device=old.device)
                _raw(new)[dst] = _raw(old)[src]
                pools[layer] = new
            if self.k_rest is not None and self.k_rest[layer] is not None:
                self._shrink_rest(layer, need[layer])
        self.capacity_l, self.start_l = need, starts
        self.capacity = need.max(0).values
        self.max_capacity = int(self.capacity.max())

    def _shrink_rest(self, layer: int, need: torch.Tensor) -> None:
        """A ThinK layer's side pool (k_rest) resized with its regions: each sequence's rows for the tokens after its
        context, need [B] - its context, the rows written so far copied over."""
        ctx, old_start = self.ctx_len[layer], self.rest_start[layer]
        tail = (need - ctx).clamp(min=0)
        used = torch.minimum((self.kept[layer] - ctx).clamp(min=0), tail)
        start = torch.cumsum(tail, 0) - tail
        seq = torch.repeat_interleave(torch.arange(used.numel(), device=used.device), used)
        off = torch.arange(int(used.sum()), device=used.device) - torch.repeat_interleave(torch.cumsum(used, 0) - used, used)
        old = self.k_rest[layer]
        new = torch.zeros((int(tail.sum()),) + tuple(old.shape[1:]), dtype=old.dtype, device=old.device)
        _raw(new)[start[seq] + off] = _raw(old)[old_start[seq] + off]
        self.k_rest[layer], self.rest_start[layer] = new, start

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

    # what an evicting cache holds per (slot, kv head), moved together when a policy compacts or shrink copies
    PER_SLOT = ("k", "v", "k_scale", "v_scale", "pos", "acc")

    def _seq_of(self, layer: int, slots: torch.Tensor) -> torch.Tensor:
        """An evicting cache's sequence owning each of one layer's slots (any shape), with no host sync."""
        return torch.searchsorted(self.start_l[layer], slots.long(), right=True) - 1

    def key_channels(self, layer: int) -> torch.Tensor | None:
        """[B, Hkv, Dk]: the key channels this layer stores per sequence and kv head (ThinK), or None: all."""
        return None if self.chan is None else self.chan[layer]

    def prune_keys(self, layer: int, seqs: torch.Tensor, chan: torch.Tensor) -> None:
        """Keep only channels chan [B', Hkv, Dk] of the keys cached so far (the context's) of sequences seqs [B']
        in one layer, for real: the layer's key pool is rebuilt Dk wide (the full one freed). Keys written later
        (the question, decode steps) stay whole, as kvpress's ThinKPress leaves them: their kept channels go in
        that pool, the others in a side pool (k_rest) sized for each sequence's tokens still to come. Every cache
        sequence must be among seqs (one width per pool)."""
        B, D = self.kept.shape[1], self.k[layer].shape[-1]
        if len(seqs) != B:
            raise LengthwiseError("prune_keys: every sequence of the cache needs its channels (one key width per layer)")
        keep = torch.empty((B,) + tuple(chan.shape[1:]), dtype=torch.int64, device=chan.device)
        keep[seqs] = chan
        mask = torch.ones(B, chan.shape[1], D, dtype=torch.bool, device=chan.device).scatter_(-1, keep, False)
        drop = mask.nonzero()[:, 2].view(B, chan.shape[1], D - chan.shape[2])  # [B, Hkv, D - Dk]
        old = self.k[layer]
        owner = self._seq_of(layer, torch.arange(old.shape[0], device=old.device)).clamp(min=0)  # [S_l]
        pruned = _raw(old).gather(-1, keep[owner])  # [S_l, Hkv, Dk]
        self.k[layer] = pruned if old.dtype == pruned.dtype else pruned.view(old.dtype)
        ctx = self.kept[layer].clone()  # [B] the context's tokens (ThinK evicts none: offset = position)
        tail = (self.capacity_l[layer] - ctx).clamp(min=0)  # [B] room for the tokens after it
        if self.k_rest is None:
            self.k_rest, self.rest_start, self.ctx_len = ([None] * self.n_layers for _ in range(3))
        self.k_rest[layer] = torch.zeros((int(tail.sum()),) + tuple(drop.shape[1:]), dtype=old.dtype, device=old.device)
        self.rest_start[layer], self.ctx_len[layer] = torch.cumsum(tail, 0) - tail, ctx
        self.chan[layer], self.drop = keep, (self.drop or [None] * self.n_layers)
        self.drop[layer] = drop

    def _rest_rows(self, layer: int, slots: torch.Tensor):
        """-> (owner, row in k_rest, whether the slot is past its sequence's context) for one layer's slots."""
        owner = self._seq_of(layer, slots).clamp(min=0)
        t = slots.long() - self.start_l[layer][owner] - self.ctx_len[layer][owner]  # index past the context
        R = self.k_rest[layer].shape[0]
        past = (t >= 0) & (self.rest_start[layer][owner] + t < R)
        return owner, (self.rest_start[layer][owner] + t).clamp(0, max(R - 1, 0)), past

    def _put(self, name: str, layer: int, slots: torch.Tensor, x: torch.Tensor) -> None:
        """Store x [T, Hkv, D] in one layer's pool `name` (k, v, k_far) at slots [T], quantized where fp8; keys of a
        ThinK layer split into their kept channels (the pool) and the others (k_rest)."""
        if self.quantized:
            x, scale = quantize(x)
            getattr(self, name + "_scale")[layer][slots] = scale
        pool = getattr(self, name)[layer]
        x = _raw(x.to(pool.dtype))
        if name == "k" and self.key_channels(layer) is not None:
            owner, row, _ = self._rest_rows(layer, slots)
            if self.k_rest[layer].shape[0]:
                _raw(self.k_rest[layer])[row] = x.gather(-1, self.drop[layer][owner])
            x = x.gather(-1, self.chan[layer][owner])
        _raw(pool)[slots] = x

    def _thin_keys(self, layer: int) -> torch.Tensor:
        """A ThinK layer's keys [S, Hkv, D] in the compute dtype: the context's at their kept channels and zeros
        elsewhere (kvpress's zeroed channels), the later ones whole. A transient of this one layer."""
        kp, rest = self.k[layer], self.k_rest[layer]
        S, Hkv = kp.shape[:2]
        D = kp.shape[-1] + rest.shape[-1]
        slots = torch.arange(S, device=kp.device)
        owner, row, past = self._rest_rows(layer, slots)
        full = torch.zeros(S, Hkv, D, dtype=kp.dtype if not self.quantized else torch.uint8, device=kp.device)
        _raw(full).scatter_(-1, self.chan[layer][owner], _raw(kp))
        if rest.shape[0]:
            r = torch.where(past[:, None, None], _raw(rest)[row], 0)
            _raw(full).scatter_(-1, self.drop[layer][owner], r)
        if self.quantized:
            return dequantize(full.view(FP8), self.k_scale[layer], self.dtype)
        return full if full.dtype == self.dtype else full.to(self.dtype)

    def _get(self, name: str, layer: int, idx: torch.Tensor | None = None) -> torch.Tensor:
        """One layer's pool `name`, or its slots idx (any shape), in the compute dtype."""
        x = getattr(self, name)[layer]
        x = x if idx is None else _raw(x)[idx].view(x.dtype)
        if self.quantized:
            s = getattr(self, name + "_scale")[layer]
            return dequantize(x, s if idx is None else s[idx], self.dtype)
        return x if x.dtype == self.dtype else x.to(self.dtype)

    def keys(self, layer: int, idx: torch.Tensor | None = None) -> torch.Tensor:
        """One layer's cached keys [S, Hkv, D] (or at slots idx [...]: [..., Hkv, D]) in the compute dtype; a
        ThinK layer's with the context's pruned channels zero."""
        if self.key_channels(layer) is not None:
            k = self._thin_keys(layer)
            return k if idx is None else k[idx]
        return self._get("k", layer, idx)

    def values(self, layer: int, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self._get("v", layer, idx)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one layer's new keys and values [T, Hkv, D] at slots [T]; -> the layer's pools to attend over
        (the pools themselves, or where stored in another dtype, a copy in the compute dtype)."""
        self._put("k", layer, slots, k)
        self._put("v", layer, slots, v)
        return self.keys(layer), self.values(layer)

    def write_far(self, layer: int, slots: torch.Tensor, kf: torch.Tensor) -> torch.Tensor:
        self._put("k_far", layer, slots, kf)
        return self._get("k_far", layer)

    def move(self, layer: int, dst: torch.Tensor, src: torch.Tensor) -> None:
        """An evicting cache's compaction: slot dst[i] of kv head h takes what slot src[i, h] holds, for
        everything kept per slot (keys, values, their scales, positions, scores). dst [N], src [N, Hkv]."""
        heads = torch.arange(src.shape[1], device=src.device)
        for name in self.PER_SLOT:
            pools = getattr(self, name)
            if pools is not None:
                p = _raw(pools[layer])
                p[dst[:, None], heads] = p[src, heads]

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
