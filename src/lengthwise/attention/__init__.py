"""Attention backends behind one varlen interface (FlashAttention's convention).

    attend(q [Tq, H, D], k [Tk, Hkv, D], v [Tk, Hkv, D], meta) -> [Tq, H, D]

Sequence i's queries are q[cu_q[i]:cu_q[i+1]]; its keys are k[cu_k[i] : cu_k[i] + used_k[i]]
(used_k defaults to the cu_k spans). Queries are aligned to the end of their keys, so the same
call serves packed prefill (Tq == Tk) and decode against a ragged KV cache (one query per sequence).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .mask import MaskPattern
from .backend import KERNELS, Backend, have_triton, triton_interpreting
from .cpu_flash import attend_cpu_flash
from .reference import attend_reference
from .split_kv import attend_split, auto_splits
from .varlen import attend_varlen


@dataclass
class AttnMeta:
    """FlashAttention's varlen metadata, nothing else."""
    cu_q: torch.Tensor  # [B+1] int32
    max_q: int
    cu_k: torch.Tensor  # [B+1] int32; in a cache, the start of each sequence's region
    max_k: int
    used_k: torch.Tensor | None = None  # [B] int32 keys in use per sequence (cache decode)

    @classmethod
    def packed(cls, cu_seqlens: torch.Tensor, max_seqlen: int) -> "AttnMeta":
        return cls(cu_seqlens, max_seqlen, cu_seqlens, max_seqlen)


BACKENDS = KERNELS


def _triton_decode_applies(q, meta: "AttnMeta", mask: MaskPattern, backend: Backend) -> bool:
    """A varlen decode step (one query per sequence, causal) with the Triton decode kernel switched on."""
    backend = Backend.of(backend)
    return (backend.kernel == "varlen" and backend.triton_decode and meta.max_q == 1 and mask.causal and meta.cu_q.shape[0] == q.shape[0] + 1
            and backend.triton(q))


def _triton_prefill_applies(q, k, meta: "AttnMeta", mask: MaskPattern, backend: Backend, return_lse: bool) -> bool:
    """A varlen packed causal self-attention (prefill without a cache) with the Triton prefill kernel on, whose
    longest sequence reaches backend.triton_prefill_min. Measured on an H100 against FlashAttention-2
    (docs/benchmarks.md): faster on long packs (256-8192 tokens), slower on mixes of at most 512 tokens."""
    backend = Backend.of(backend)
    return (backend.kernel == "varlen" and backend.triton_prefill and mask.causal and not return_lse and meta.used_k is None
            and (meta.cu_q is meta.cu_k) and q.shape[0] == k.shape[0]
            and meta.max_q >= max(backend.triton_prefill_min, 2) and q.shape[-1] <= 256 and backend.triton(q))


def decode_kernel_applies(q, meta: "AttnMeta", mask: MaskPattern, backend: Backend) -> bool:
    """attend() would run this step on the Triton decode kernel: a varlen decode step that split-KV leaves
    whole (short keys, or many sequences). Also the condition for the fused RoPE + cache write + attention
    step (triton_decode.rope_cache_decode)."""
    return _triton_decode_applies(q, meta, mask, backend) and auto_splits(q, meta, mask, backend) == 1


def remap_decode_applies(q, meta: "AttnMeta", mask: MaskPattern, backend: Backend) -> bool:
    """A remap's decode step (one query per sequence against a cache, causal) runs both regions in one pass
    (triton_two_region.two_region_decode): on the GPU (or Triton's interpreter), with Backend.one_pass_remap on.
    Whatever split-KV would do: the kernel splits the keys itself."""
    backend = Backend.of(backend)
    return (backend.one_pass_remap and meta.max_q == 1 and mask.causal
            and meta.used_k is not None and meta.cu_q.shape[0] == q.shape[0] + 1
            and (q.is_cuda or triton_interpreting()) and backend.triton(q))


def attend(q, k, v, meta: AttnMeta, mask: MaskPattern, backend: "Backend | str" = "reference",
           scale: float | None = None, return_lse: bool = False, splits: int | None = None, bias=None):
    """-> out [Tq, H, D], and with return_lse the log-sum-exp of each query's scores [Tq, H] float32.

    bias: an additive attention bias per sequence, bias(i, n_q, n_k) -> [H, n_q, n_k] (positions/scratch/);
    only the reference kernel takes one.

    splits: cut each sequence's keys into that many chunks (decode steps only: one query per sequence);
    None lets split_kv.auto_splits decide."""
    backend = Backend.of(backend)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if bias is not None:
        if backend.kernel != "reference":
            from ..errors import LengthwiseError
            raise LengthwiseError(f"an attention bias (ALiBi, T5, FIRE) runs on the reference kernel, not "
                                  f"{backend.kernel}: load with backend='reference'")
        return attend_reference(q, k, v, meta, mask, scale, return_lse, bias)
    s = auto_splits(q, meta, mask, backend) if splits is None else splits
    if splits is None and s == 1 and _triton_decode_applies(q, meta, mask, backend):  # decode_kernel_applies
        # a decode step split-KV leaves whole (short keys, or many sequences): the GQA-grouped kernel
        from .triton_decode import decode_attention
        used = meta.used_k if meta.used_k is not None else meta.cu_k.diff()
        return decode_attention(q, k, v, meta.cu_k, used, scale, mask.window, return_lse)
    if s > 1:
        return attend_split(q, k, v, meta, mask, backend, scale, s, return_lse)
    if _triton_prefill_applies(q, k, meta, mask, backend, return_lse):
        from .triton_prefill import prefill_attention
        return prefill_attention(q, k, v, meta.cu_q, scale, mask.window)
    if backend.kernel == "reference":
        return attend_reference(q, k, v, meta, mask, scale, return_lse)
    if backend.kernel == "cpu_flash":
        return attend_cpu_flash(q, k, v, meta, mask, scale, return_lse)
    return attend_varlen(q, k, v, meta, mask, scale, return_lse)


__all__ = ["AttnMeta", "Backend", "have_triton", "attend", "decode_kernel_applies", "remap_decode_applies", "BACKENDS",
           "MaskPattern"]
