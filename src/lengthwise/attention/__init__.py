"""Attention backends behind one varlen interface (FlashAttention's convention).

    attend(q [Tq, H, D], k [Tk, Hkv, D], v [Tk, Hkv, D], meta) -> [Tq, H, D]

Sequence i's queries are q[cu_q[i]:cu_q[i+1]]; its keys are k[cu_k[i] : cu_k[i] + used_k[i]]
(used_k defaults to the cu_k spans). Queries are aligned to the end of their keys, so the same
call serves packed prefill (Tq == Tk) and decode against a ragged KV cache (one query per sequence).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import LengthwiseError
from .mask import MaskPattern, Causal, Bidirectional, SlidingWindow
from .cpu_flash import DTYPES as CPU_FLASH_DTYPES, attend_cpu_flash
from .reference import attend_reference
from .split_kv import attend_split, auto_splits
from .varlen import attend_varlen


@dataclass
class AttnMeta:
    cu_q: torch.Tensor  # [B+1] int32
    max_q: int
    cu_k: torch.Tensor  # [B+1] int32; in a cache, the start of each sequence's region
    max_k: int
    used_k: torch.Tensor | None = None  # [B] int32 keys in use per sequence (cache decode)
    # what a length-gated position scheme (beyond=true) keys on, from the cache: each sequence's prompt
    # length [B], and the longest over the cache as a host int (None without a cache: the sequence lengths)
    prompt_len: torch.Tensor | None = None
    prompt_max: int | None = None
    # the cache's largest region (host int): no sequence of it ever grows longer (None without a cache)
    max_capacity: int | None = None

    @classmethod
    def packed(cls, cu_seqlens: torch.Tensor, max_seqlen: int) -> "AttnMeta":
        return cls(cu_seqlens, max_seqlen, cu_seqlens, max_seqlen)


BACKENDS = ("reference", "cpu_flash", "varlen")

# The Triton decode kernel (triton_decode.py) takes varlen decode steps that split-KV leaves whole: on where
# triton is installed (measured on an H100: docs/benchmarks.md); LENGTHWISE_TRITON_DECODE=0 turns it off.
# Read at call time, so a test or benchmark can flip it.
TRITON_DECODE = os.environ.get("LENGTHWISE_TRITON_DECODE", "1") == "1"
_HAVE_TRITON: bool | None = None


def _have_triton() -> bool:
    global _HAVE_TRITON
    if _HAVE_TRITON is None:
        try:
            import triton  # noqa: F401
            _HAVE_TRITON = True
        except ImportError:
            _HAVE_TRITON = False
    return _HAVE_TRITON


def _triton_decode_applies(q, meta: "AttnMeta", mask: MaskPattern, backend: str) -> bool:
    """A varlen decode step (one query per sequence, causal) with the Triton decode kernel switched on."""
    return (TRITON_DECODE and backend == "varlen" and meta.max_q == 1 and mask.causal
            and meta.cu_q.shape[0] == q.shape[0] + 1 and _have_triton()
            and not torch.compiler.is_compiling())  # a compiled step keeps FlashAttention: the compiler fuses


# The Triton prefill kernel (triton_prefill.py) takes packed causal prefills whose longest sequence has at
# least TRITON_PREFILL_MIN tokens. Measured on an H100 against FlashAttention-2 (docs/benchmarks.md): 1.36x
# faster attention on the 1.1B long mix (256-8192 tokens), +11% SmolLM2 prefill there; on mixes of at most
# 512 tokens it was -2.5% to -32%, so shorter packs stay on FlashAttention. LENGTHWISE_TRITON_PREFILL=0
# turns it off; LENGTHWISE_TRITON_PREFILL_MIN moves the threshold.
TRITON_PREFILL = os.environ.get("LENGTHWISE_TRITON_PREFILL", "1") == "1"
TRITON_PREFILL_MIN = int(os.environ.get("LENGTHWISE_TRITON_PREFILL_MIN", "1024"))


def _triton_prefill_applies(q, k, meta: "AttnMeta", mask: MaskPattern, backend: str, return_lse: bool) -> bool:
    """A varlen packed causal self-attention (prefill without a cache) with the Triton prefill kernel on,
    whose longest sequence reaches TRITON_PREFILL_MIN."""
    return (TRITON_PREFILL and backend == "varlen" and mask.causal and not return_lse and meta.used_k is None
            and (meta.cu_q is meta.cu_k) and q.shape[0] == k.shape[0] and meta.max_q >= max(TRITON_PREFILL_MIN, 2)
            and q.shape[-1] <= 256 and _have_triton() and not torch.compiler.is_compiling())


def decode_kernel_applies(q, meta: "AttnMeta", mask: MaskPattern, backend: str) -> bool:
    """attend() would run this step on the Triton decode kernel: a varlen decode step that split-KV leaves
    whole (short keys, or many sequences). Also the condition for the model's fused RoPE + cache write +
    attention step (triton_decode.rope_cache_decode)."""
    return _triton_decode_applies(q, meta, mask, backend) and auto_splits(q, meta, mask, backend) == 1


def pick_backend(name: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """auto: FlashAttention varlen on a GPU in fp16/bf16, torch's fused CPU kernel on a CPU, else the reference
    (float64 always runs on the reference, the exact twin every fast backend is checked against)."""
    device = torch.device(device)
    if name in (None, "auto"):
        if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
            return "varlen"
        return "cpu_flash" if device.type == "cpu" and dtype in CPU_FLASH_DTYPES else "reference"
    if name not in BACKENDS:
        raise LengthwiseError(f"unknown attention backend {name!r}: choose one of {', '.join(BACKENDS)} or auto")
    if name == "varlen" and (device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16)):
        raise LengthwiseError("the varlen backend needs a CUDA device and float16/bfloat16: use --backend reference")
    if name == "cpu_flash" and (device.type != "cpu" or dtype not in CPU_FLASH_DTYPES):
        raise LengthwiseError("the cpu_flash backend needs the CPU and float32/bfloat16/float16: "
                              "use --backend reference")
    return name


def attend(q, k, v, meta: AttnMeta, mask: MaskPattern, backend: str = "reference", scale: float | None = None,
           return_lse: bool = False, splits: int | None = None):
    """-> out [Tq, H, D], and with return_lse the log-sum-exp of each query's scores [Tq, H] float32.

    splits: cut each sequence's keys into that many chunks (decode steps only: one query per sequence);
    None lets split_kv.auto_splits decide."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = auto_splits(q, meta, mask, backend) if splits is None else splits
    if splits is None and s == 1 and _triton_decode_applies(q, meta, mask, backend):  # decode_kernel_applies
        # a decode step split-KV leaves whole (short keys, or many sequences): the GQA-grouped kernel
        from .triton_decode import decode_attention
        used = meta.used_k if meta.used_k is not None else meta.cu_k.diff()
        return decode_attention(q, k, v, meta.cu_k, used, scale, mask.window, return_lse)
    if s > 1:
        return attend_split(q, k, v, meta, mask, backend, scale, s, return_lse)
    if _triton_prefill_applies(q, k, meta, mask, backend, return_lse):
        from .triton_prefill import prefill_attention
        return prefill_attention(q, k, v, meta.cu_q, scale, mask.window)
    if backend == "reference":
        return attend_reference(q, k, v, meta, mask, scale, return_lse)
    if backend == "cpu_flash":
        return attend_cpu_flash(q, k, v, meta, mask, scale, return_lse)
    return attend_varlen(q, k, v, meta, mask, scale, return_lse)


__all__ = ["AttnMeta", "attend", "decode_kernel_applies", "pick_backend", "BACKENDS", "MaskPattern", "Causal", "Bidirectional", "SlidingWindow"]
