"""Attention in two regions merged by log-sum-exp: how remapped positions run without a T x T mask.

A query at position p sees keys at distance < W through the plain rotation (near pass: varlen
attention with a window) and keys at distance >= W through remapped rotations (far pass). The far
pass reuses the causal kernel: with each sequence's keys cut to its first used_k - W, a query
aligned to the end of its keys sees exactly the keys at index <= p - W. When the far keys are only
the first few "sink" tokens, the far pass is a small dense product instead. The two softmaxes
become one exactly: out = (o1 e^lse1 + o2 e^lse2) / (e^lse1 + e^lse2).
"""
from __future__ import annotations

import torch

from .mask import MaskPattern

_CHUNK = 8192  # queries per dense sink-pass block: bounds its memory at long lengths


def attend_two_region(q, k, v, qf, kf, meta, mask: MaskPattern, far, backend: str, scale: float | None = None):
    """q, k [T*, H*, D] with plain rotations; qf, kf the far-pass rotations; far: positions.rope.Far."""
    from . import AttnMeta, attend
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    W = far.window
    near = MaskPattern(causal=True, window=W if mask.window is None else min(W, mask.window))
    o1, lse1 = attend(q, k, v, meta, near, backend, scale, return_lse=True)  # [T, H, D], [T, H]
    if far.sinks is None:
        used = meta.used_k if meta.used_k is not None else meta.cu_k.diff()
        far_meta = AttnMeta(meta.cu_q, meta.max_q, meta.cu_k, meta.max_k, torch.clamp(used - W, min=0).to(torch.int32))
        o2, lse2 = attend(qf, kf, v, far_meta, MaskPattern(causal=True), backend, scale, return_lse=True)
    else:
        o2, lse2 = _sink_pass(qf, kf, v, meta, far.q_pos, W, far.sinks, scale)
    lse2 = lse2.masked_fill((far.q_pos < W)[:, None], float("-inf"))  # no far keys (kernels report +inf there)
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse1, lse2 = lse1.to(work), lse2.to(work)
    m = torch.maximum(lse1, lse2)
    w1, w2 = torch.exp(lse1 - m)[..., None], torch.exp(lse2 - m)[..., None]  # [T, H, 1]
    return ((o1.to(work) * w1 + o2.to(work) * w2) / (w1 + w2)).to(q.dtype)


def _sink_pass(qf, kf, v, meta, q_pos, W: int, n: int, scale: float):
    """Each query against the first n keys of its own sequence, those at distance >= W. -> out, lse."""
    T, H, D = qf.shape
    Hkv = kf.shape[1]
    work = torch.float64 if qf.dtype == torch.float64 else torch.float32
    n_q = meta.cu_q.diff().long()
    seq = torch.repeat_interleave(torch.arange(n_q.numel(), device=qf.device), n_q, output_size=T)  # [T]
    j = torch.arange(n, device=qf.device)
    used = meta.used_k if meta.used_k is not None else meta.cu_k.diff()  # [B]
    slots = (meta.cu_k[:-1].long()[:, None] + j[None, :]).clamp(max=kf.shape[0] - 1)  # [B, n]
    real = (j[None, :] < used[:, None])[:, :, None, None]  # slots past a sequence's keys hold garbage (even NaN)
    ks = torch.where(real, kf[slots].to(work), 0.0)  # [B, n, Hkv, D]
    vs = torch.where(real, v[slots].to(work), 0.0)
    out = torch.empty(T, H, D, dtype=work, device=qf.device)
    lse = torch.empty(T, H, dtype=work, device=qf.device)
    for a in range(0, T, _CHUNK):
        b = min(a + _CHUNK, T)
        qc = qf[a:b].to(work).view(b - a, Hkv, H // Hkv, D)  # query head h reads kv head h // (H/Hkv)
        kc, vc = ks[seq[a:b]], vs[seq[a:b]]  # [t, n, Hkv, D]
        s = torch.einsum("tgrd,tngd->tgrn", qc, kc) * scale  # [t, Hkv, rep, n]
        visible = j[None, :] <= (q_pos[a:b] - W)[:, None]  # [t, n]
        s = s.masked_fill(~visible[:, None, None, :], float("-inf"))
        l = torch.logsumexp(s, dim=-1)  # [t, Hkv, rep]
        p = torch.exp(s - l[..., None]).nan_to_num(0.0)
        out[a:b] = torch.einsum("tgrn,tngd->tgrd", p, vc).reshape(b - a, H, D)
        lse[a:b] = l.reshape(b - a, H)
    return out, lse
