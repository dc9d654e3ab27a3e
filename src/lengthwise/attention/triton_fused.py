"""Fused Triton kernels for the GPU path: residual add + RMSNorm (Llama) or + LayerNorm (BERT), and SiLU-and-multiply.

A decode step moves a few rows per layer, so in a CUDA graph its time goes to many tiny elementwise
kernels (add, pow, mean, rsqrt, mul, cast; silu, mul). Each function here is one launch instead. Sizes
come from the tensors' shapes as Python ints and constexprs and nothing reads the device, so a step
stays capturable in a CUDA graph.

Triton is imported on first call, not with lengthwise; TRITON_INTERPRET=1 runs the kernels on CPU tensors.
Triton 3.6's interpreter truncates float32 -> bfloat16 where the GPU rounds to nearest even, so under it
_interpreter_bf16_fix() makes that cast round; with it bfloat16 matches torch on the CPU too.
"""
from __future__ import annotations


import torch

from .backend import on_device, triton_interpreting
from .launch import launch
from ..errors import LengthwiseError

_KERNELS = None
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
MAX_DIM = 16384  # one row in one block: beyond this its registers spill
SILU_BLOCK = 1024  # columns per silu_mul program
NORM_ELEMENTS = 4096  # elements per add-norm program from NORM_ROWS_FROM rows on: several short rows share one
NORM_ROWS_FROM = 2048


def _interpreter_bf16_fix():
    """Triton 3.6's interpreter casts float32 -> bfloat16 by dropping the low 16 bits; round to nearest even
    as the GPU's cvt.rn does (NaN kept NaN)."""
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle
    cast = InterpreterBuilder.cast_impl
    if getattr(cast, "lengthwise", False):
        return

    def patched(self, src, dst_type):
        if not (src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16):
            return cast(self, src, dst_type)
        f = np.asarray(src.data, dtype=np.float32)
        bits = f.view(np.uint32).astype(np.uint64)
        bf = np.where(np.isnan(f), 0x7FC0, (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        return TensorHandle(bf, tl.bfloat16)

    patched.lengthwise = True
    InterpreterBuilder.cast_impl = patched


def _build():
    import triton
    import triton.language as tl
    if triton_interpreting():
        from .triton_decode import _interpreter_index_fix
        _interpreter_index_fix()
        _interpreter_bf16_fix()

    @triton.jit
    def _add_norm(x_ptr, y_ptr, w_ptr, b_ptr, res_ptr, out_ptr, T, sx_t, sx_d, sy_t, sy_d, eps,
                  DIM: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr, HAS_Y: tl.constexpr,
                  STORE_SUM: tl.constexpr, LAYER: tl.constexpr):
        """ROWS rows: r = x + y, rounded to x's dtype as torch's add is; then RMSNorm(r) * w, or with LAYER
        LayerNorm(r) * w + b, in float32, stored in out's dtype."""
        t = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # [ROWS, 1]
        cols = tl.arange(0, BLOCK)[None, :]  # [1, BLOCK]
        ok = (t < T) & (cols < DIM)
        x = tl.load(x_ptr + t * sx_t + cols * sx_d, mask=ok, other=0.0)
        r = x.to(tl.float32)
        if HAS_Y:
            r += tl.load(y_ptr + t * sy_t + cols * sy_d, mask=ok, other=0.0).to(tl.float32)
            r = r.to(x.dtype).to(tl.float32)
            if STORE_SUM:
                tl.store(res_ptr + t * DIM + cols, r.to(res_ptr.dtype.element_ty), mask=ok)
        w = tl.load(w_ptr + cols, mask=cols < DIM, other=0.0).to(tl.float32)
        if LAYER:
            mean = tl.sum(r, 1)[:, None] / DIM
            d = tl.where(ok, r - mean, 0.0)
            inv = tl.rsqrt(tl.sum(d * d, 1)[:, None] / DIM + eps)
            normed = d * inv * w + tl.load(b_ptr + cols, mask=cols < DIM, other=0.0).to(tl.float32)
        else:
            normed = r * tl.rsqrt(tl.sum(r * r, 1)[:, None] / DIM + eps) * w
        tl.store(out_ptr + t * DIM + cols, normed.to(out_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _silu_mul(gu_ptr, out_ptr, s_t, s_c, H: tl.constexpr, BLOCK: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = cols < H
        gate = tl.load(gu_ptr + t * s_t + cols * s_c, mask=ok, other=0.0).to(tl.float32)
        up = tl.load(gu_ptr + t * s_t + (cols + H) * s_c, mask=ok, other=0.0).to(tl.float32)
        dt = out_ptr.dtype.element_ty
        # torch's two kernels: silu rounded to the dtype, then the product in float32 rounded again
        silu = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
        tl.store(out_ptr + t * H + cols, (silu * up).to(dt), mask=ok)

    return triton, _add_norm, _silu_mul


def fused_applies(x: torch.Tensor, backend, dtypes: tuple = (torch.float32,)) -> bool:
    """The layers run on these kernels: Backend.fused on (the default, measured on an H100:
    docs/benchmarks.md), the varlen family with triton, a residual stream on CUDA in one of dtypes (Llama's is
    float32), no gradient needed and not inside torch.compile (Backend.triton). The reference backend stays the
    plain-torch twin they are checked against."""
    return backend.fused and x.is_cuda and x.dtype in dtypes and x.shape[-1] <= MAX_DIM and backend.triton(x)


def _kernels():
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _build()
    return _KERNELS


def _check_rows(fn: str, x, y, dims: dict, x_dtypes=FLOATS):
    if x.dim() != 2 or x.dtype not in x_dtypes:
        raise LengthwiseError(f"{fn}: x must be a {'/'.join(str(d).removeprefix('torch.') for d in x_dtypes)} "
                              f"[T, dim] residual stream, got {x.dtype} {list(x.shape)}")
    T, dim = x.shape
    if not 0 < dim <= MAX_DIM:
        raise LengthwiseError(f"{fn}: dim {dim} is outside 1..{MAX_DIM} (one row per block)")
    if y is not None and (y.shape != x.shape or y.dtype not in FLOATS or y.device != x.device):
        raise LengthwiseError(f"{fn}: y must match x [{T}, {dim}] on {x.device} in one of "
                              f"{FLOATS}, got {y.dtype} {list(y.shape)} on {y.device}")
    for name, p in dims.items():
        if p.shape != (dim,) or p.dtype not in FLOATS or p.device != x.device:
            raise LengthwiseError(f"{fn}: {name} must be [{dim}] on {x.device} in one of {FLOATS}, "
                                  f"got {p.dtype} {list(p.shape)} on {p.device}")


def _launch(x, y, weight, bias, residual, normed, eps: float, layer: bool):
    """residual None: the sum is not stored (the kernel gets a placeholder it never writes)."""
    triton, kernel, _ = _kernels()
    weight = weight if weight.stride(0) == 1 else weight.contiguous()
    bias = weight if bias is None else bias if bias.stride(0) == 1 else bias.contiguous()
    T, dim = x.shape
    block = triton.next_power_of_2(dim)
    # rows per program: in a prefill, fewer and fuller programs keep more bytes in flight; a decode step's
    # few rows keep one program each
    rows = max(1, min(NORM_ELEMENTS // block, triton.next_power_of_2(T))) if T >= NORM_ROWS_FROM else 1
    yk = x if y is None else y  # a placeholder the kernel never reads when HAS_Y is off
    with on_device(x):
        launch(kernel, (triton.cdiv(T, rows),), x, yk, weight, bias, normed if residual is None else residual, normed,
               T, x.stride(0), x.stride(1), yk.stride(0), yk.stride(1), float(eps), DIM=dim, BLOCK=block, ROWS=rows,
               HAS_Y=y is not None, STORE_SUM=residual is not None, LAYER=layer,
               num_warps=min(max(block * rows // 256, 1), 8))


def add_rms_norm(x, y, weight, eps: float, out_dtype: torch.dtype):
    """x [T, dim] float32 residual stream, y [T, dim] block output or None, weight [dim] -> (residual, normed).

    residual = x + y in float32 (a new tensor; x itself when y is None), normed [T, dim] out_dtype =
    F.rms_norm(residual, (dim,), weight.float(), eps).to(out_dtype) up to float32 rounding."""
    _check_rows("add_rms_norm", x, y, {"weight": weight}, (torch.float32,))
    if out_dtype not in FLOATS:
        raise LengthwiseError(f"add_rms_norm: out_dtype must be one of {FLOATS}, got {out_dtype}")
    residual = x if y is None else torch.empty_like(x, memory_format=torch.contiguous_format)
    normed = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    if x.shape[0]:
        _launch(x, y, weight, None, None if y is None else residual, normed, eps, layer=False)
    return residual, normed


def add_layer_norm(x, y, weight, bias, eps: float):
    """Post-LN's step: x [T, dim] stream, y [T, dim] sublayer output -> LayerNorm(x + y) [T, dim] in x's dtype.

    The sum is rounded to x's dtype, as torch's add is, then normalized in float32 with the weight and
    bias: F.layer_norm((x + y), (dim,), weight, bias, eps) of float32 parameters, up to float32 rounding."""
    _check_rows("add_layer_norm", x, y, {"weight": weight, "bias": bias})
    normed = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.shape[0]:
        _launch(x, y, weight, bias, None, normed, eps, layer=True)
    return normed


def silu_mul(gu):
    """gu [T, 2h] (gate in the first h columns, up in the last h; any strides) -> out [T, h] in gu's dtype,
    F.silu(gate) * up rounded as torch rounds it: silu to the dtype, then the product to the dtype."""
    if gu.dim() != 2 or gu.dtype not in FLOATS:
        raise LengthwiseError(f"silu_mul: gu must be [T, 2h] in one of {FLOATS}, got {gu.dtype} {list(gu.shape)}")
    T, two_h = gu.shape
    if two_h % 2:
        raise LengthwiseError(f"silu_mul: gu has {two_h} columns, not gate and up of equal width")
    h = two_h // 2
    out = torch.empty(T, h, dtype=gu.dtype, device=gu.device)
    if T == 0 or h == 0:
        return out
    triton, _, kernel = _kernels()
    block = min(SILU_BLOCK, triton.next_power_of_2(h))
    with on_device(gu):
        launch(kernel, (T, triton.cdiv(h, block)), gu, out, gu.stride(0), gu.stride(1), H=h, BLOCK=block)
    return out
