"""GPU attention through FlashAttention's varlen kernels as shipped in torch.

The public `torch.nn.attention.varlen.varlen_attn` serves packed prefill. Older torch releases
lack its window, GQA and seqused_k arguments; then the same kernel is reached through
`aten._flash_attention_forward`, which has had them since torch 2.5.
"""
from __future__ import annotations

import inspect
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _public_params() -> frozenset[str]:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return frozenset()
    return frozenset(inspect.signature(varlen_attn).parameters)


def attend_varlen(q, k, v, meta, mask, scale):
    params = _public_params()
    left, right = mask.flash_window
    needs = set()
    if meta.used_k is not None:
        needs.add("seqused_k")
    if left != -1:
        needs.add("window_size")
    if scale != q.shape[-1] ** -0.5:
        needs.add("scale")
    if params and needs <= params:
        from torch.nn.attention.varlen import varlen_attn
        kw = {}
        if q.shape[1] != k.shape[1]:
            if "enable_gqa" in params:
                kw["enable_gqa"] = True
            else:  # this torch's wrapper wants equal heads
                rep = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if "window_size" in needs:
            kw["window_size"] = (left, right)
        if "seqused_k" in needs:
            kw["seqused_k"] = meta.used_k
        if "scale" in needs:
            kw["scale"] = scale
        return varlen_attn(q, k, v, meta.cu_q, meta.cu_k, meta.max_q, meta.max_k, is_causal=mask.causal, **kw)
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, meta.cu_q, meta.cu_k, meta.max_q, meta.max_k, 0.0, mask.causal, False,
        scale=scale, window_size_left=left if left != -1 else None,
        window_size_right=right if right != -1 else None, seqused_k=meta.used_k)
    return out[0]
