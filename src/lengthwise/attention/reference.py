"""Pure-torch attention, one sequence at a time: block-diagonal by construction, exact in float64."""
from __future__ import annotations

import torch


def attend_reference(q, k, v, meta, mask, scale, return_lse: bool = False, bias=None):
    """Queries are aligned to the end of their keys; a query with no visible key gets 0 (lse -inf).
    bias: bias(i, n_q, n_k) -> [H, n_q, n_k], added to sequence i's logits (ALiBi, T5, FIRE:
    positions/scratch/)."""
    if meta.used_k is None and meta.cu_q is meta.cu_k and not return_lse and q.shape[0] == k.shape[0]:
        return _packed_by_length(q, k, v, meta, mask, scale, bias)
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


def _packed_by_length(q, k, v, meta, mask, scale, bias):
    """Packed self-attention with sequences of one length batched together: the same arithmetic per sequence as
    the loop above, in one einsum per distinct length (training packs hold many short sequences)."""
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    cu = meta.cu_q.tolist()
    by_len: dict[int, list[int]] = {}
    for i, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        if b > a:
            by_len.setdefault(b - a, []).append(i)
    rep = q.shape[1] // k.shape[1]
    out = torch.zeros_like(q)
    for n, seqs in by_len.items():
        starts = torch.tensor([cu[i] for i in seqs], device=q.device)
        idx = (starts[:, None] + torch.arange(n, device=q.device)).reshape(-1)  # [B * n]
        q_b = q[idx].to(work).view(len(seqs), n, *q.shape[1:])  # [B, n, H, D]
        k_b = k[idx].to(work).view(len(seqs), n, *k.shape[1:]).repeat_interleave(rep, dim=2)
        v_b = v[idx].to(work).view(len(seqs), n, *v.shape[1:]).repeat_interleave(rep, dim=2)
        s = torch.einsum("bqhd,bkhd->bhqk", q_b, k_b) * scale  # [B, H, n, n]
        if bias is not None:
            many = bias.batch(seqs, n) if hasattr(bias, "batch") else torch.stack([bias(i, n, n) for i in seqs])
            s = s + many.to(work)
        pos = torch.arange(n, device=q.device)
        s = s.masked_fill(~mask.allowed(pos, pos), float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)
        out[idx] = torch.einsum("bhqk,bkhd->bqhd", p, v_b).reshape(-1, *q.shape[1:]).to(q.dtype)
    return out
