"""The attention step of one layer: RoPE, the cache write, the KV policy and the kernel, in one call.

Every family's Attention.forward is projections, one call, output projection (as in gpt-fast):

    qkv = self.wqkv(x).view(T, H + 2 * Hkv, D)
    y = attention_step(qkv, H, Hkv, step, layer, window)
    return self.wo(y.reshape(T, -1))

`Step` is what one forward needs besides its tokens, shared by every layer: the varlen metadata, the mask,
the Backend, and for a decoder its rotations (positions/), its KV cache and the cache slots of the new tokens
(kv/), and the policy that may evict after this forward (kv/policy.py). The step picks one of four paths:

- a GPU decode step: RoPE, the cache write and attention in one Triton kernel (triton_decode.rope_cache_decode);
- the fused prefill (Backend.fused): RoPE and the cache write in one Triton kernel, then attend();
- plain torch: RoPE, the cache write, attend() (the only path that records a gradient, and the one an fp8
  cache takes: its write quantizes and its read dequantizes, kv/cache.py);
- a remap (SelfExtend, LM-Infinite): a second, far rotation and two-region attention (two_region.py); its GPU
  decode step runs both regions in one kernel (triton_two_region.py);
- a head-wise cache (kv/headwise.py: a count per kv head, Ada-KV): plain torch RoPE, then attention over each
  (sequence, kv head) as a sequence of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import LengthwiseError
from . import AttnMeta, MaskPattern, attend, decode_kernel_applies, remap_decode_applies
from .backend import Backend


@dataclass
class Rotations:
    """One forward's rotation (positions/rope.py) and its tables in the compute dtype, shared by every layer."""
    rot: object  # positions.Rotation
    near: object  # positions.Tables
    far_q: object | None = None
    far_k: object | None = None

    @classmethod
    def of(cls, rot, dtype: torch.dtype) -> "Rotations":
        from ..positions import Tables
        f = rot.far
        return cls(rot, Tables.of(rot.cos, rot.sin, dtype),
                   None if f is None else Tables.of(f.cos_q, f.sin_q, dtype),
                   None if f is None or f.cos_k is None else Tables.of(f.cos_k, f.sin_k, dtype))


@dataclass
class Step:
    """What one forward needs besides tokens: how sequences meet, and where keys are kept.

    slots: [T] cache slots of the new tokens, or [L, T] for a cache that evicts (each layer keeps its own
    count, so its own slots; meta.used_k is then [L, B]). lengths: what the length gate keys on (positions/
    gate.py), by default the cache's last plan. policy, seqs: the KV policy of an evicting cache and the cache
    sequences seqs [B'] of this forward (a policy that accumulates attention scores every forward, H2O, sees
    them all); budgets [B'] or [L, B']: after this forward keep at most that many tokens of each sequence (per
    layer where the policy gives layers their own budgets); None: no eviction now.
    rots: the rotations, set by the model's forward."""
    meta: AttnMeta
    mask: MaskPattern
    backend: Backend | str = "reference"
    cache: object | None = None  # kv.RaggedKVCache
    slots: torch.Tensor | None = None
    lengths: object | None = None  # positions.gate.Lengths
    policy: object | None = None  # kv.Policy
    seqs: torch.Tensor | None = None
    budgets: torch.Tensor | None = None
    rots: Rotations | None = None
    bias: object | None = None  # positions.scratch.SequenceBias: an additive bias per sequence, set by the forward

    def __post_init__(self):
        self.backend = Backend.of(self.backend)
        if self.lengths is None and self.cache is not None:
            self.lengths = self.cache.planned
        if self.budgets is not None and (self.policy is None or self.seqs is None):
            raise LengthwiseError("Step: budgets need the policy and the cache sequences (seqs) they apply to")

    def of_layer(self, layer: int) -> tuple[AttnMeta, torch.Tensor | None]:
        """This layer's metadata and slots: an evicting cache's layers each keep their own count."""
        if self.slots is not None and self.slots.dim() == 2:
            cu_k = self.meta.cu_k[layer] if self.meta.cu_k.dim() == 2 else self.meta.cu_k
            return replace(self.meta, cu_k=cu_k, used_k=self.meta.used_k[layer]), self.slots[layer]
        return self.meta, self.slots


def attention_step(qkv: torch.Tensor, n_heads: int, n_kv_heads: int, step: Step, layer: int,
                   window: int | None = None, fused: bool = False, scale: float | None = None) -> torch.Tensor:
    """qkv [T, H + 2 Hkv, D] (one GEMM's queries, keys and values) -> [T, H, D].

    window: this layer's own sliding window (None: the step's mask). fused: the model's fused layers are on
    (attention/triton_fused.py): RoPE and the cache write in one Triton kernel. A GPU decode step takes the fused decode
    kernel whenever attention.decode_kernel_applies, whatever `fused` says (Backend.triton_decode)."""
    H, Hkv, D = n_heads, n_kv_heads, qkv.shape[-1]
    mask = step.mask if window is None else MaskPattern(step.mask.causal, window=window)
    meta, slots = step.of_layer(layer)
    cache, rots, backend = step.cache, step.rots, step.backend
    scale = D ** -0.5 if scale is None else scale
    if rots is None:  # no positions to apply (BERT: learned absolute positions, added at the embedding)
        q, k, v = qkv[:, :H], qkv[:, H:H + Hkv], qkv[:, H + Hkv:]
        if cache is not None:
            k, v = cache.write(layer, slots, k, v)
        return _evict(step, layer, q, attend(q, k, v, meta, mask, backend, scale, bias=step.bias), scale)
    far = rots.rot.far
    if cache is not None and getattr(cache, "headwise", False):  # a count per kv head (kv/headwise.py)
        from ..kv.headwise import attend_headwise
        qk = rots.near.apply(qkv[:, :H + Hkv])
        q = qk[:, :H]
        y = attend_headwise(q, qk[:, H:], qkv[:, H + Hkv:], cache, layer, slots, meta, mask, backend, scale)
        return _evict(step, layer, q, y, scale)
    scored = step.policy is not None and step.policy.needs_queries(step.budgets is not None)  # this forward's queries
    # a bias runs the plain path (attend takes it on the reference kernel); so does a cache stored in another
    # dtype (fp8), whose write and read the fused kernels do not convert
    # and so does a layer whose cache keeps some key channels of its context only (ThinK)
    converts = cache is not None and (cache.store_dtype != cache.dtype or cache.key_channels(layer) is not None)
    fused = fused and step.bias is None and not converts
    if (far is None and step.bias is None and cache is not None and meta.used_k is not None and not scored
            and not converts and decode_kernel_applies(qkv[:, :H], meta, mask, backend)):
        from .triton_decode import rope_cache_decode
        y = rope_cache_decode(qkv, rots.near, cache.k[layer], cache.v[layer], slots, meta.cu_k, meta.used_k,
                              scale, mask.window)
        return _evict(step, layer, None, y)
    if far is None and fused:
        from .triton_decode import rope_prefill
        kv = () if cache is None else (cache.k[layer], cache.v[layer], slots)
        qk = rope_prefill(qkv, rots.near, Hkv, *kv)
        q = qk[:, :H]
        k, v = (qk[:, H:], qkv[:, H + Hkv:]) if cache is None else (cache.k[layer], cache.v[layer])
        return _evict(step, layer, q, attend(q, k, v, meta, mask, backend, scale), scale)
    qk = rots.near.apply(qkv[:, :H + Hkv])  # queries and keys rotated in one pass
    q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + Hkv:]  # [T, H, D], [T, Hkv, D], [T, Hkv, D]
    if far is None:
        if cache is not None:
            k, v = cache.write(layer, slots, k, v)
        return _evict(step, layer, q, attend(q, k, v, meta, mask, backend, scale, bias=step.bias), scale)
    # a remap: queries (and maybe keys) rotated again for the far region
    from .two_region import attend_two_region
    qf = rots.far_q.apply(qkv[:, :H])
    kf = k if rots.far_k is None else rots.far_k.apply(qkv[:, H:H + Hkv])
    if cache is not None:
        if far.cos_k is not None and cache.k_far is None:
            raise LengthwiseError("this position scheme needs a KV cache built with far_keys=True "
                                  "(model.rotary.far_keys)")
        k, v = cache.write(layer, slots, k, v)
        kf = cache.write_far(layer, slots, kf) if far.cos_k is not None else k
        if (far.sinks is None and step.bias is None and not converts
                and (mask.window is None or mask.window >= far.window) and remap_decode_applies(q, meta, mask, backend)):
            from .triton_two_region import two_region_decode  # a decode step: both regions, each key read once
            return two_region_decode(q, qf, k, v, kf, meta.cu_k, meta.used_k, far.window, scale, meta.max_k)
    return attend_two_region(q, k, v, qf, kf, meta, mask, far, backend, scale)


def _evict(step: Step, layer: int, q, y, scale: float | None = None):
    """After this layer's attention: let the policy see it (accumulated scores) and trim the layer's cache to
    the step's budgets."""
    if step.policy is not None and step.seqs is not None and step.policy.evicts:
        from ..kv.policy import after_attention
        b = step.budgets
        after_attention(step.policy, step.cache, layer, step.seqs, None if b is None else (b[layer] if b.dim() == 2 else b),
                        q, step.meta.cu_q, scale)
    return y
