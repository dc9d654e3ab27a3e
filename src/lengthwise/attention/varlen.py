"""GPU attention through FlashAttention's varlen kernels as shipped in torch.

The public `torch.nn.attention.varlen.varlen_attn` serves what its installed release can do
without copies. Its arguments grew over releases (torch 2.11 has window_size but no is_causal,
enable_gqa or seqused_k), so whatever it cannot take (GQA without expanding heads, decode against
a ragged cache) goes to the same kernel through `aten._flash_attention_forward`.
"""
from __future__ import annotations

import inspect

import torch


# torch.nn.attention.varlen imports torch._dynamo (about 2 s): imported on the first varlen call, not with
# lengthwise, so the CPU paths and the command line start without it
varlen_attn = None
_PARAMS = None  # varlen_attn's parameter names, read once: a plain constant keeps torch.compile from breaking the graph


def _load() -> frozenset:
    global varlen_attn, _PARAMS
    try:
        from torch.nn.attention.varlen import varlen_attn as fn
    except ImportError:  # torch < 2.10
        fn = None
    varlen_attn = fn
    _PARAMS = frozenset(inspect.signature(fn).parameters) if fn else frozenset()
    return _PARAMS


def attend_varlen(q, k, v, meta, mask, scale, return_lse: bool = False):
    params = _PARAMS if _PARAMS is not None else _load()
    left, right = mask.flash_window
    kw = {"window_size": (left, right)}
    if "is_causal" in params:
        kw["is_causal"] = mask.causal
    if q.shape[1] != k.shape[1]:
        kw["enable_gqa"] = True
    if meta.used_k is not None:
        kw["seqused_k"] = meta.used_k
    if scale != q.shape[-1] ** -0.5:
        kw["scale"] = scale
    if set(kw) <= params and not return_lse:
        return varlen_attn(q, k, v, meta.cu_q, meta.cu_k, meta.max_q, meta.max_k, **kw)
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, meta.cu_q, meta.cu_k, meta.max_q, meta.max_k, 0.0, mask.causal, False,
        scale=scale, window_size_left=None if left == -1 else left,
        window_size_right=None if right == -1 else right, seqused_k=meta.used_k)
    if not return_lse:
        return out[0]
    return out[0], _lse_per_token(out[1], meta, q.shape[0])


def _lse_per_token(lse: torch.Tensor, meta, total_q: int) -> torch.Tensor:
    """FlashAttention's log-sum-exp as [Tq, H] float32; rows that saw no key come back as +inf there."""
    if lse.dim() == 2:  # [H, Tq]: the varlen layout of FlashAttention >= 2.4
        return lse.T
    # [B, H, max_q]: older releases pad per sequence
    n_q = meta.cu_q.diff().long()
    seq = torch.repeat_interleave(torch.arange(n_q.numel(), device=lse.device), n_q, output_size=total_q)
    row = torch.arange(total_q, device=lse.device) - meta.cu_q[:-1].long()[seq]
    return lse[seq, :, row]
