"""Pure-torch attention, one sequence at a time: block-diagonal by construction, exact in float64."""
from __future__ import annotations

import torch


def attend_reference(q, k, v, meta, mask, scale):
    out = torch.empty_like(q)  # [Tq, H, D]
    cu_q, cu_k = meta.cu_q.tolist(), meta.cu_k.tolist()
    used = meta.used_k.tolist() if meta.used_k is not None else [b - a for a, b in zip(cu_k[:-1], cu_k[1:])]
    rep = q.shape[1] // k.shape[1]
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    for i, n_k in enumerate(used):
        q_i = q[cu_q[i]:cu_q[i + 1]].to(work)  # [Lq, H, D]
        k_i = k[cu_k[i]:cu_k[i] + n_k].to(work).repeat_interleave(rep, dim=1)  # [Lk, H, D]
        v_i = v[cu_k[i]:cu_k[i] + n_k].to(work).repeat_interleave(rep, dim=1)
        n_q = q_i.shape[0]
        s = torch.einsum("qhd,khd->hqk", q_i, k_i) * scale  # [H, Lq, Lk]
        k_pos = torch.arange(n_k, device=q.device)
        ok = mask.allowed(k_pos[n_k - n_q:], k_pos)
        s = s.masked_fill(~ok, float("-inf"))
        p = torch.softmax(s, dim=-1)
        out[cu_q[i]:cu_q[i + 1]] = torch.einsum("hqk,khd->qhd", p, v_i).to(q.dtype)
    return out
