"""Attention weights on request: what a scoring KV policy needs, computed for it alone.

The kernels return outputs (and log-sum-exp) only; a policy that ranks cached tokens by attention (SnapKV,
H2O, TOVA) asks for the weights of each sequence's last w queries over its cached keys. Plain torch, dense over
[B, H, w, S]: w is small (a window of 1-64 queries), so this is cheap beside the forward it follows.
"""
from __future__ import annotations

import torch


def last_queries(q: torch.Tensor, cu_q: torch.Tensor, rows: torch.Tensor, w: int) -> torch.Tensor:
    """q [T, H, D] packed, cu_q [B+1] -> [len(rows), w, H, D]: the last w queries of each sequence in rows,
    zero rows first where a sequence has fewer."""
    end = cu_q[1:].long()[rows]  # [B']
    start = cu_q[:-1].long()[rows]
    idx = end[:, None] - w + torch.arange(w, device=q.device)[None, :]  # [B', w]
    ok = idx >= start[:, None]
    return torch.where(ok[..., None, None], q[idx.clamp(min=0)], 0)


def window_weights(queries: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor, scale: float) -> torch.Tensor:
    """queries [B, w, H, D], keys [B, S, Hkv, D], valid [B, S] -> [B, H, w, S] float32 softmax weights over the
    valid keys (query head h reads kv head h // (H / Hkv)). The window's queries are the newest tokens, so
    every cached key is in their past; causality inside the window is kept too: query i of w sees the keys
    up to the last valid one minus (w - 1 - i)."""
    B, w, H, D = queries.shape
    Hkv = keys.shape[2]
    s = torch.einsum("bwgrd,bsgd->bgrws", queries.float().view(B, w, Hkv, H // Hkv, D), keys.float()) * scale
    s = s.reshape(B, H, w, -1)  # [B, H, w, S]
    n = valid.sum(1)  # [B]
    last = n[:, None] - w + torch.arange(w, device=keys.device)[None, :]  # [B, w]: the newest key each query sees
    seen = torch.arange(keys.shape[1], device=keys.device)[None, None, :] <= last[:, :, None]  # [B, w, S]
    s = s.masked_fill(~seen[:, None], float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0)
