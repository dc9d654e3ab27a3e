"""Pure-torch attention, one sequence at a time: block-diagonal by construction, exact in float64."""
from __future__ import annotations

import torch


def attend_reference(q, k, v, meta, mask, scale, return_lse: bool = False, bias=None):
    """Queries are aligned to the end of their keys; a query with no visible key gets 0 (lse -inf).
    bias: bias(i, n_q, n_k) -> [H, n_q, n_k], added to sequence i's logits (ALiBi, T5, FIRE:
    positions/scratch/)."""
    out = torch.zeros_like(q)  # [Tq, H, D]
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse = torch.full(q.shape[:2], float("-inf"), dtype=work, device=q.device)  # [Tq, H]
    cu_q, cu_k = meta.cu_q.tolist(), meta.cu_k.tolist()
    used = meta.used_k.tolist() if meta.used_k is not None else [b - a for a, b in zip(cu_k[:-1], cu_k[1:])]
    rep = q.shape[1] // k.shape[1]
    for i, n_k in enumerate(used):
        if n_k == 0 or cu_q[i] == cu_q[i + 1]:
            continue
        q_i = q[cu_q[i]:cu_q[i + 1]].to(work)  # [Lq, H, D]
        k_i = k[cu_k[i]:cu_k[i] + n_k].to(work).repeat_interleave(rep, dim=1)  # [Lk, H, D]
        v_i = v[cu_k[i]:cu_k[i] + n_k].to(work).repeat_interleave(rep, dim=1)
        n_q = q_i.shape[0]
        s = torch.einsum("qhd,khd->hqk", q_i, k_i) * scale  # [H, Lq, Lk]
        if bias is not None:
            s = s + bias(i, n_q, n_k).to(work)
        ok = mask.allowed(torch.arange(n_k - n_q, n_k, device=q.device), torch.arange(n_k, device=q.device))
        s = s.masked_fill(~ok, float("-inf"))
        l_i = torch.logsumexp(s, dim=-1)  # [H, Lq]; -inf where a query sees nothing
        p = torch.exp(s - l_i[..., None]).nan_to_num(0.0)
        out[cu_q[i]:cu_q[i + 1]] = torch.einsum("hqk,khd->qhd", p, v_i).to(q.dtype)
        lse[cu_q[i]:cu_q[i + 1]] = l_i.T
    return (out, lse) if return_lse else out
