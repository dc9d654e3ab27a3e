"""Split-KV decode (flash-decoding): one query per sequence against long keys, in chunks merged by log-sum-exp.

A decode step gives FlashAttention's varlen kernel one thread block per (sequence, head): a single
sequence of SmolLM2 occupies 9 of an H100's 132 SMs, however long its cache. Here each sequence's used
keys are cut into S equal chunks, the query is repeated once per chunk, and the S partial results are
merged exactly: out = sum_s o_s e^(lse_s - m) / sum_s e^(lse_s - m). Every op takes its sizes from
Python ints and the batch's shape, so a step stays capturable in a CUDA graph (no host sync).

Auto mode (`auto_splits`) is on for the varlen backend (measured on an H100: 6.1x faster decode of one
sequence at 128k, docs/benchmarks.md); Backend(split_kv=False) turns it off. Any backend runs it when
`attend(..., splits=S)` asks.
"""
from __future__ import annotations

import torch

SMS = 132  # an H100's streaming multiprocessors: the blocks a step should offer at least
MIN_CHUNK = 2048  # keys per chunk below which splitting costs more than it gives


def auto_splits(q: torch.Tensor, meta, mask, backend) -> int:
    """How many chunks a decode step's keys go in: 1 (no split) unless it is a long, narrow decode step."""
    from .backend import Backend
    backend = Backend.of(backend)
    if not backend.split_kv or backend.kernel != "varlen" or meta.max_q != 1 or mask.window is not None or not mask.causal:
        return 1
    if meta.cu_q.shape[0] != q.shape[0] + 1:  # a step where some sequence has no new query: not a decode step
        return 1
    blocks = q.shape[0] * q.shape[1]  # (sequence, head) pairs
    s = min(-(-2 * SMS // blocks), meta.max_k // MIN_CHUNK)
    return max(1, 1 << (max(s, 1).bit_length() - 1))  # a power of two: few distinct graph shapes


def attend_split(q, k, v, meta, mask, backend: str, scale: float, splits: int, return_lse: bool = False):
    """q [B, H, D], one query per sequence aligned to the end of its keys; same contract as attend()."""
    from . import AttnMeta, attend
    from ..errors import LengthwiseError
    B, H, D = q.shape
    if meta.max_q != 1 or meta.cu_q.shape[0] != B + 1 or mask.window is not None:
        raise LengthwiseError("split-KV attention runs decode steps only: one query per sequence, no window")
    S = splits
    used = (meta.used_k if meta.used_k is not None else meta.cu_k.diff()).long()  # [B]
    per = (used + S - 1) // S  # keys per chunk, per sequence
    j = torch.arange(S, device=q.device)
    off = torch.minimum(j[None, :] * per[:, None], used[:, None])  # [B, S] chunk starts within the sequence
    lens = torch.minimum(per[:, None], used[:, None] - off)  # [B, S], 0 for chunks past the end
    starts = meta.cu_k[:-1].long()[:, None] + off
    cu_k = torch.cat([starts.flatten(), meta.cu_k[-1:].long()]).to(torch.int32)
    cu_q = torch.arange(B * S + 1, dtype=torch.int32, device=q.device)
    chunks = AttnMeta(cu_q, 1, cu_k, -(-meta.max_k // S), lens.flatten().to(torch.int32))
    o, lse = attend(q.repeat_interleave(S, dim=0), k, v, chunks, mask, backend, scale, return_lse=True, splits=1)
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse = lse.to(work).masked_fill((lens.flatten() == 0)[:, None], float("-inf")).view(B, S, H)  # (FA: +inf there)
    m = lse.amax(dim=1)  # [B, H]; -inf only for a sequence with no key at all
    m = torch.where(torch.isinf(m), 0.0, m)
    w = torch.exp(lse - m[:, None])  # [B, S, H]
    den = w.sum(dim=1)  # [B, H]
    out = (o.to(work).view(B, S, H, D) * w[..., None]).sum(dim=1) / den.clamp_min(torch.finfo(work).tiny)[..., None]
    out = out.to(q.dtype)
    if not return_lse:
        return out
    return out, m + torch.log(den)
