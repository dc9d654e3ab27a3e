"""Triton decode attention: one query per sequence against a ragged KV cache, one program per GQA group.

FlashAttention's varlen kernel runs a decode step as one block per (sequence, query head), each a
128-row query tile holding one real row. Here one program serves a (sequence, kv head) pair: the G
query heads that share the kv head are the rows of one small tile (padded to 16 for tl.dot), each key
block is loaded once for all of them, and the softmax is online in fp32. Sizes come from the tensors'
shapes and Python ints only, so a step stays capturable in a CUDA graph.

Triton is imported on first call, not with lengthwise; TRITON_INTERPRET=1 runs the kernel on CPU tensors
(float32/float16: the interpreter's tl.dot is wrong in bfloat16, which benchmarks/gpu_check.py checks).
Opt-in through attend(): LENGTHWISE_TRITON_DECODE=1, until it is measured on the GPU.
"""
from __future__ import annotations

import math
import os

import torch

from ..errors import LengthwiseError

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
    import triton.language as tl
    if os.environ.get("TRITON_INTERPRET") == "1":
        _interpreter_index_fix()

    @triton.jit
    def _decode_attn(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, cu_ptr, used_ptr,
                sq_b, sq_h, sk_s, sk_h, sv_s, sv_h, so_b, so_h,
                qk_scale, window, G: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr, IEEE: tl.constexpr):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        rows = tl.arange(0, BLOCK_G)  # query heads kvh * G + rows
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < G
        col_ok = cols < D
        heads = kvh * G + rows
        q = tl.load(q_ptr + b.to(tl.int64) * sq_b + heads[:, None] * sq_h + cols[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0)  # [BLOCK_G, BLOCK_D]

        start = tl.load(cu_ptr + b).to(tl.int64)
        n = tl.load(used_ptr + b)
        lo = 0
        if WINDOW:
            lo = tl.maximum(n - window, 0)  # the query (position n - 1) sees distance < window

        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)  # running max, log2 units
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        for j in range(lo, n, BLOCK_N):
            offs = j + tl.arange(0, BLOCK_N)
            key_ok = offs < n
            rows_k = start + offs.to(tl.int64)
            kv_mask = key_ok[:, None] & col_ok[None, :]  # never touch rows past used: they may be NaN
            k = tl.load(k_ptr + rows_k[:, None] * sk_s + kvh * sk_h + cols[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_ptr + rows_k[:, None] * sv_s + kvh * sv_h + cols[None, :], mask=kv_mask, other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = tl.where(key_ok[None, :], s * qk_scale, float("-inf"))  # [BLOCK_G, BLOCK_N]
            m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every block holds at least one key
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            if IEEE:
                pv = tl.dot(p, v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new

        seen = l_i > 0
        out = acc / tl.where(seen, l_i, 1.0)[:, None]  # 0 where the query saw no key
        tl.store(o_ptr + b.to(tl.int64) * so_b + heads[:, None] * so_h + cols[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
        lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
        tl.store(lse_ptr + b.to(tl.int64) * (G * tl.num_programs(1)) + heads, lse, mask=row_ok)

    return triton, _decode_attn


def decode_attention(q, k, v, cu_k, used_k, scale: float, window: int | None = None, return_lse: bool = False):
    """q [B, H, D] (each sequence's newest position), k/v [S, Hkv, D] the layer's cache pool, cu_k [B+1]
    int32 region starts, used_k [B] int32 keys in use -> out [B, H, D] (and lse [B, H] float32, natural log
    of the scaled scores, -inf where a sequence sees no key)."""
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build()
    triton, kernel = _KERNEL
    B, H, D = q.shape
    Hkv = k.shape[1]
    if H % Hkv:
        raise LengthwiseError(f"decode attention needs query heads ({H}) a multiple of kv heads ({Hkv})")
    G = H // Hkv
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    out = torch.empty_like(q)
    lse = torch.empty(B, H, dtype=torch.float32, device=q.device)
    kernel[(B, Hkv)](
        q, k, v, out, lse, cu_k, used_k,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        scale * math.log2(math.e), 0 if window is None else window,
        G=G, D=D, BLOCK_G=max(16, triton.next_power_of_2(G)), BLOCK_D=max(16, triton.next_power_of_2(D)),
        BLOCK_N=BLOCK_N, WINDOW=window is not None, IEEE=q.dtype == torch.float32)
    return (out, lse) if return_lse else out
