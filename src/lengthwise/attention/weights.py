"""Attention weights on request: what a scoring KV policy needs, computed for it alone.

The kernels return outputs (and log-sum-exp) only; a policy that ranks cached tokens by attention asks for
one of two things, and only a forward that evicts (or a policy that accumulates) pays for it:

- the weights of each sequence's last w queries over its cached keys (SnapKV, TOVA, PyramidKV): `window_weights`;
- the column sums of attention, every query's weights added per key, optionally decayed by the query's
  distance from the newest one (H2O, A2SF): `column_sums`, in blocks of queries so that memory stays
  [B, H, block, S].

Plain torch, float32, dense over each sequence's cached keys (padded to the longest of the forward).
"""
from __future__ import annotations

import torch


def last_queries(q: torch.Tensor, cu_q: torch.Tensor, rows: torch.Tensor, w: int, offset: int = 0) -> torch.Tensor:
    """q [T, H, D] packed, cu_q [B+1] -> [len(rows), w, H, D]: of each sequence in rows, the w queries that end
    `offset` before its last one; zero rows first where a sequence has fewer."""
    q_ok = last_rows(cu_q, rows, w, offset)
    idx, ok = q_ok
    return torch.where(ok[..., None, None], q[idx.clamp(min=0)], 0)


def last_rows(cu_q: torch.Tensor, rows: torch.Tensor, w: int, offset: int = 0):
    """-> idx [B', w] packed query indices of that block and ok [B', w], False where the sequence has none."""
    end = cu_q[1:].long()[rows] - offset  # [B']
    start = cu_q[:-1].long()[rows]
    idx = end[:, None] - w + torch.arange(w, device=cu_q.device)[None, :]  # [B', w]
    return idx, idx >= start[:, None]


def window_weights(queries: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor, scale: float,
                   offset: int = 0) -> torch.Tensor:
    """queries [B, w, H, D], keys [B, S, Hkv, D], valid [B, S] -> [B, H, w, S] float32 softmax weights over the
    valid keys (query head h reads kv head h // (H / Hkv)). The queries are the block that ends `offset` before
    the newest token, and the newest keys are this forward's tokens in order, so causality holds: query i of
    w sees the keys up to the last valid one minus (offset + w - 1 - i)."""
    B, w, H, D = queries.shape
    Hkv = keys.shape[2]
    s = torch.einsum("bwgrd,bsgd->bgrws", queries.float().view(B, w, Hkv, H // Hkv, D), keys.float()) * scale
    s = s.reshape(B, H, w, -1)  # [B, H, w, S]
    n = valid.sum(1)  # [B]
    last = n[:, None] - offset - w + torch.arange(w, device=keys.device)[None, :]  # [B, w]: the newest key each sees
    seen = torch.arange(keys.shape[1], device=keys.device)[None, None, :] <= last[:, :, None]  # [B, w, S]
    s = s.masked_fill(~seen[:, None], float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0)


def column_sums(q: torch.Tensor, cu_q: torch.Tensor, rows: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor,
                scale: float, decay: float = 1.0, block: int = 256) -> torch.Tensor:
    """Each sequence's attention summed over this forward's queries, per key: [B', H, S] float32.

    q [T, H, D], cu_q [B+1]: the forward's packed queries; rows [B']: which of its sequences; keys [B', S, Hkv,
    D] and valid [B', S]: those sequences' cached keys, this forward's included, last. A query d tokens
    before the newest weighs decay**d (decay=1: a plain sum, H2O; below 1: A2SF's forgetting factor)."""
    n_q = (cu_q[1:] - cu_q[:-1]).long()[rows]
    longest = int(n_q.max()) if n_q.numel() else 0
    out = torch.zeros(keys.shape[0], q.shape[1], keys.shape[1], dtype=torch.float32, device=keys.device)
    for off in range(0, longest, block):
        w = min(block, longest - off)
        idx, ok = last_rows(cu_q, rows, w, off)
        qs = torch.where(ok[..., None, None], q[idx.clamp(min=0)], 0)
        p = window_weights(qs, keys, valid, scale, off)  # [B', H, w, S]
        d = (off + w - 1 - torch.arange(w, device=keys.device)).double()  # each query's distance from the newest
        wt = (decay ** d).float()[None, :] * ok.float()  # [B', w]
        out += torch.einsum("bhws,bw->bhs", p, wt)
    return out
