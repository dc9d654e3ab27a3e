"""Triton decode attention: one query per sequence against a ragged KV cache, one program per GQA group.

FlashAttention's varlen kernel runs a decode step as one block per (sequence, query head), each a
128-row query tile holding one real row. Here one program serves a (sequence, kv head) pair: the G
query heads that share the kv head are the rows of one small tile (padded to 16 for tl.dot), each key
block is loaded once for all of them, and the softmax is online in fp32. Sizes come from the tensors'
shapes and Python ints only, so a step stays capturable in a CUDA graph.

rope_cache_decode is the same kernel fused with the step around it (RoPE of the queries and the new key,
the cache writes), the model's whole decode-step attention; rope_prefill rotates a prefill's queries and
keys (and writes the cache) in one pass. On an H100 the decode step of 64 SmolLM2 sequences went from
2.96 to 1.06 ms with them (docs/benchmarks.md).

Triton is imported on first call, not with lengthwise; TRITON_INTERPRET=1 runs the kernel on CPU tensors
(float32/float16: the interpreter's tl.dot is wrong in bfloat16, which benchmarks/gpu_check.py checks).
On by default where triton is installed (attention.decode_kernel_applies); Backend(triton_decode=False)
turns the kernel and the fused decode step off.
"""
from __future__ import annotations

import math

import torch

from ..errors import LengthwiseError
from .backend import on_device, triton_interpreting
from .launch import launch

_KERNEL = None
BLOCK_N = 64  # keys per loop step


def _interpreter_index_fix():
    """Triton 3.6's interpreter turns a scalar into a loop bound with int() of a 1-element array, which
    numpy >= 2.4 refuses; read the element instead."""
    import numpy as np
    from triton.runtime import interpreter
    patch = interpreter._patch_lang_tensor
    if getattr(patch, "lengthwise", False):
        return

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patched.lengthwise = True
    interpreter._patch_lang_tensor = patched


def _build():
    import triton
    if triton_interpreting():
        _interpreter_index_fix()
    from ._kernels import decode_attn, rope_qk
    return triton, decode_attn, rope_qk


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build()
    return _KERNEL


def _launch(q, k, v, out, lse, cu_k, used_k, scale, window, G, H, tables=None, slots=None):
    triton, kernel, _ = _kernel()
    B, D, Hkv = q.shape[0], q.shape[-1], k.shape[1]
    fused = tables is not None
    cos, sin = (tables.cos, tables.sin) if fused else (q, q)  # unused pointers when not fused
    with on_device(q):
        launch(
            kernel, (B, Hkv), q, k, v, out, lse, cu_k, used_k, cos, sin, slots if fused else used_k,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
            cos.stride(0), scale * math.log2(math.e), 0 if window is None else window,
            G=G, H=H, HKV=Hkv, D=D, BLOCK_G=max(16, triton.next_power_of_2(G)),
            BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_N=BLOCK_N, WINDOW=window is not None,
            IEEE=q.dtype == torch.float32, FUSED=fused,
            # no FMA contraction when fused: RoPE then rounds as Tables.apply does (on an H100, 24% of the
            # rotated elements differed by an ulp with it, none without)
            enable_fp_fusion=not fused)


def _groups(H: int, Hkv: int) -> int:
    if H % Hkv:
        raise LengthwiseError(f"decode attention needs query heads ({H}) a multiple of kv heads ({Hkv})")
    return H // Hkv


def _last_contiguous(*ts):
    return [t if t.stride(-1) == 1 else t.contiguous() for t in ts]


def decode_attention(q, k, v, cu_k, used_k, scale: float, window: int | None = None, return_lse: bool = False):
    """q [B, H, D] (each sequence's newest position), k/v [S, Hkv, D] the layer's cache pool, cu_k [B+1]
    int32 region starts, used_k [B] int32 keys in use -> out [B, H, D] (and lse [B, H] float32, natural log
    of the scaled scores, -inf where a sequence sees no key)."""
    B, H, D = q.shape
    G = _groups(H, k.shape[1])
    q, k, v = _last_contiguous(q, k, v)
    out = torch.empty_like(q)
    lse = torch.empty(B, H, dtype=torch.float32, device=q.device)
    _launch(q, k, v, out, lse, cu_k, used_k, scale, window, G, H)
    return (out, lse) if return_lse else out


def rope_cache_decode(qkv, tables, k, v, slots, cu_k, used_k, scale: float, window: int | None = None):
    """One fused decode step of a layer: qkv [B, H + 2 Hkv, D] (one new token per sequence, before RoPE,
    heads laid out q | k | v as Attention.wqkv makes them), tables the step's RoPE Tables (cos and
    sign-folded sin [B, 1, D], in qkv's dtype), k/v [S, Hkv, D] the layer's cache pool, slots [B] where the
    new keys go, cu_k [B+1] int32 region starts, used_k [B] int32 keys in use counting the new one.

    Rotates the queries and the new keys as Tables.apply does (same rounding), writes the new keys and
    values to the cache, and returns attention out [B, H, D]: what Tables.apply, two index writes and
    decode_attention compute in seven kernels, in one."""
    B, C, D = qkv.shape
    Hkv = k.shape[1]
    H = C - 2 * Hkv
    G = _groups(H, Hkv)
    if tables.cos.shape[0] != B or slots.shape[0] != B or used_k.shape[0] != B:
        raise LengthwiseError(f"fused decode needs one RoPE row, slot and key count per sequence ({B})")
    qkv, k, v = _last_contiguous(qkv, k, v)
    out = torch.empty(B, H, D, dtype=qkv.dtype, device=qkv.device)
    lse = torch.empty(B, H, dtype=torch.float32, device=qkv.device)
    _launch(qkv, k, v, out, lse, cu_k, used_k, scale, window, G, H, tables, slots)
    return out


def rope_prefill(qkv, tables, n_kv_heads: int, k=None, v=None, slots=None):
    """qkv [T, H + 2 Hkv, D] (before RoPE) -> q and k rotated as Tables.apply does (same rounding), as one
    contiguous [T, H + Hkv, D]; given the layer's cache pool k/v [S, Hkv, D] and slots [T], the rotated keys
    and the values are also written there. One kernel where Tables.apply and two index writes take six."""
    T, C, D = qkv.shape
    H = C - 2 * n_kv_heads
    if tables.cos.shape[0] != T or (slots is not None and slots.shape[0] != T):
        raise LengthwiseError(f"fused RoPE needs one table row and slot per token ({T})")
    triton, _, kernel = _kernel()
    qkv, cos, sin = _last_contiguous(qkv, tables.cos, tables.sin)
    out = torch.empty(T, H + n_kv_heads, D, dtype=qkv.dtype, device=qkv.device)
    if T == 0:
        return out
    cache = k is not None
    k, v = (k, v) if cache else (out, out)  # placeholders the kernel never touches without CACHE
    with on_device(qkv):
        launch(kernel, (T,), qkv, out, cos, sin, k, v, slots if cache else cos, qkv.stride(0), qkv.stride(1),
               out.stride(0), out.stride(1), cos.stride(0), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
               H=H, HKV=n_kv_heads, D=D, BLOCK_HEADS=triton.next_power_of_2(H + n_kv_heads),
               BLOCK_D=triton.next_power_of_2(D), CACHE=cache, enable_fp_fusion=False)  # as in _launch
    return out
