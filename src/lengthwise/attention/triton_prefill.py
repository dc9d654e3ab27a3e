"""Triton prefill attention: causal self-attention over a packed batch (FlashAttention's varlen layout).

One program per (block of BLOCK_M queries of one sequence, query head); the blocks come from a table
built on the GPU (no host sync) and ordered heaviest first, since a causal block's work grows with its
position. Keys below the diagonal run unmasked, the diagonal blocks masked; softmax is online in fp32.
GQA reads each kv head for its G query heads from cache.

attend() routes a varlen packed causal prefill here when its longest sequence has at least
Backend.triton_prefill_min tokens (1024), where it measured faster than FlashAttention-2 on an H100;
Backend(triton_prefill=False) turns it off. TRITON_INTERPRET=1 runs it on CPU tensors.
"""
from __future__ import annotations

import functools
import math

import torch

from ..errors import LengthwiseError
from .backend import on_device, triton_interpreting
from .triton_decode import _kernel, _last_contiguous

BLOCK_M = 128  # queries per program (the block table is built for it)


@functools.cache
def _build():
    """-> (triton, the kernel, its autotuned form or None under the interpreter, which would run every config)."""
    triton = _kernel()[0]  # imports triton, with the interpreter's fixes when TRITON_INTERPRET=1
    from ._kernels import prefill_attn
    if triton_interpreting():
        return triton, prefill_attn, None
    configs = [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=st)
               for bn in (64, 128) for w in (4, 8) for st in (2, 3, 4)]
    return triton, prefill_attn, triton.autotune(configs=configs, key=["D", "G", "WINDOW"])(prefill_attn)


def block_table(cu: torch.Tensor, T: int):
    """cu [B+1] int32 -> (seq, start) of every BLOCK_M-query block, heaviest (latest start) first, padded
    to a bound known on the host (T // BLOCK_M + B), and the real count [1]."""
    B = cu.numel() - 1
    lens = cu.diff().long()
    nb = (lens + BLOCK_M - 1) // BLOCK_M
    cum = nb.cumsum(0)
    j = torch.arange(T // BLOCK_M + B, device=cu.device)
    seq = torch.searchsorted(cum, j, right=True).clamp(max=B - 1)
    start = (j - (cum[seq] - nb[seq])) * BLOCK_M
    key = torch.where(j < cum[-1], start, -1)
    order = torch.argsort(key, descending=True, stable=True)
    return seq[order].to(torch.int32), start[order].to(torch.int32), cum[-1:].to(torch.int32)


def prefill_attention(q, k, v, cu, scale: float, window: int | None = None):
    """q [T, H, D], k/v [T, Hkv, D] of packed sequences (cu [B+1] int32), causal -> out [T, H, D]."""
    T, H, D = q.shape
    Hkv = k.shape[1]
    if H % Hkv or k.shape[0] != T or v.shape != k.shape or k.shape[2] != D or D > 256:
        raise LengthwiseError(f"prefill attention needs packed self-attention with query heads ({H}) a multiple "
                              f"of kv heads ({Hkv}), v shaped as k, and head dim <= 256 (got {D})")
    q, k, v = _last_contiguous(q, k, v)  # the kernel steps columns by 1
    out = torch.empty_like(q)
    if T == 0:
        return out
    triton, plain, tuned = _build()
    bseq, bstart, count = block_table(cu, T)
    args = (q, k, v, out, cu, bseq, bstart, count, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            v.stride(0), v.stride(1), out.stride(0), out.stride(1), scale * math.log2(math.e),
            0 if window is None else window)
    kw = dict(G=H // Hkv, D=D, BLOCK_M=BLOCK_M, BLOCK_D=max(16, triton.next_power_of_2(D)),
              WINDOW=window is not None, IEEE=q.dtype == torch.float32)
    grid = (bseq.numel(), H)
    with on_device(q):
        if tuned is None:
            plain[grid](*args, **kw, BLOCK_N=64)
        else:
            tuned[grid](*args, **kw)
    return out
