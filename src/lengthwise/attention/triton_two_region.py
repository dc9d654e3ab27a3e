"""One-pass two-region decode: a remap's decode step (SelfExtend, distance_cap, STRING) in one split-K kernel.

two_region.attend_two_region runs a remap as a near pass (keys at distance < W, plain rotation) and a far pass
(distance >= W, far rotations) merged by log-sum-exp: in a decode step that is two attention calls, the far one
over almost every key, and the merge. Here one program per (sequence, kv head, split) serves the G query heads
of a GQA group (as triton_decode's kernel does) and reads each cached key once: a key block wholly below the
boundary (index j < used_k - W) reads the far keys kf and scores the far queries qf, a block wholly above reads
k and scores q, and the one block across the boundary takes each key from its own region's pool. One online
softmax spans both regions, so nothing is merged but the splits: each writes its (max, sum, acc) and a second
small kernel makes them one. The split count comes from Python ints (shapes, max_k), so a step stays capturable
in a CUDA graph.

Taken by attention_step for a remap's decode step on the GPU (attention.remap_decode_applies);
Backend(one_pass_remap=False) runs attend_two_region instead. The LM-Infinite sink pattern (far.sinks) keeps its
own dense sink pass. TRITON_INTERPRET=1 runs the kernels on CPU tensors (float32/float16, as triton_decode).
"""
from __future__ import annotations

import math

import torch

from .backend import on_device, triton_interpreting
from .launch import launch
from .split_kv import SMS

_KERNEL = None
BLOCK_N = 64  # keys per loop step
NUM_WARPS, NUM_STAGES = 4, 3
MIN_SPLIT = 512  # keys per split below which another split costs more than it gives


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        import triton
        if triton_interpreting():
            from .triton_decode import _interpreter_index_fix
            _interpreter_index_fix()
        from ._kernels import merge_splits, two_region_attn
        _KERNEL = triton, two_region_attn, merge_splits
    return _KERNEL


def auto_splits(B: int, Hkv: int, max_k: int) -> int:
    """Splits per (sequence, kv head): about four programs per SM, each split at least MIN_SPLIT keys of the
    longest sequence; a power of two (few distinct graph shapes)."""
    s = min(-(-4 * SMS // max(B * Hkv, 1)), max_k // MIN_SPLIT)
    return 1 if s <= 1 else 1 << (s.bit_length() - 1)


def two_region_decode(q, qf, k, v, kf, cu_k, used_k, W: int, scale: float, max_k: int | None = None,
                      splits: int | None = None):
    """q, qf [B, H, D] each sequence's newest query with the plain and the far rotation; k, v, kf [S, Hkv, D] the
    layer's cache pools (kf the far keys, or k itself where the scheme's keys do not move); cu_k [B+1] int32
    region starts, used_k [B] int32 keys in use (the query is at index used_k - 1); W the near window: key j is
    near iff used_k - 1 - j < W. -> out [B, H, D], what attend_two_region gives (its far.sinks None).

    max_k: the longest sequence's keys (or its region), which sizes the splits (None: the pool's rows per
    sequence); splits: force that many."""
    from .triton_decode import _groups, _last_contiguous
    B, H, D = q.shape
    Hkv = k.shape[1]
    G = _groups(H, Hkv)
    same = kf is k
    q, qf, k, v, kf = _last_contiguous(q, qf, k, v, kf)
    kf = k if same else kf
    S = splits or auto_splits(B, Hkv, k.shape[0] // max(B, 1) if max_k is None else max_k)
    triton, kernel, merge = _kernel()
    out = torch.empty_like(q)
    if B == 0:
        return out
    if S > 1:
        m = torch.empty(B, H, S, dtype=torch.float32, device=q.device)
        l = torch.empty_like(m)
        acc = torch.empty(B, H, S, D, dtype=torch.float32, device=q.device)
    else:
        m = l = acc = out  # placeholders the kernel never touches with one split
    BLOCK_D = max(16, triton.next_power_of_2(D))
    with on_device(q):
        launch(
            kernel, (B, Hkv, S), q, qf, k, kf, v, out, m, l, acc, cu_k, used_k,
            q.stride(0), q.stride(1), qf.stride(0), qf.stride(1), k.stride(0), k.stride(1), kf.stride(0), kf.stride(1),
            v.stride(0), v.stride(1), out.stride(0), out.stride(1), scale * math.log2(math.e), W,
            G=G, H=H, D=D, BLOCK_G=max(16, triton.next_power_of_2(G)), BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N,
            SPLITS=S, SAME_K=same, IEEE=q.dtype == torch.float32, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
        if S > 1:
            launch(merge, (B, H), m, l, acc, out, out.stride(0), out.stride(1), H=H, D=D, BLOCK_D=BLOCK_D, SPLITS=S,
                   BLOCK_S=triton.next_power_of_2(S))
    return out
