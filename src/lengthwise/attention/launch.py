"""Launching a Triton kernel without Triton's per-call Python.

`kernel[grid](*args, **meta)` binds the arguments, specializes each one, builds a cache key, looks the
compiled kernel up, asks the driver for the stream and checks the kernel's globals: 20-40 us of host time
a launch on the H200's host, while the kernels of a short prefill run for a few microseconds each. A
SmolLM2 prefill of 256 short prompts launches 121 of them and is host-bound (docs/benchmarks.md).

`launch` keys its own table on what Triton specializes on, or finer: each tensor's dtype and 16-byte
alignment, each integer's 32/64-bit range, divisibility by 16 and equality to 1, every other argument's
value, the constexprs and options, and the device. The first launch of a key goes through Triton itself
and keeps the CompiledKernel it returns; later launches call that kernel's launcher directly with the same
arguments Triton would pass (every parameter in signature order), on the current stream. CUDA-graph
capture sees the same launch either way.

Triton runs as usual under its interpreter, for autotuned kernels, and while a launch hook is set (a
profiler such as proton): only a plain JITFunction on a GPU takes the short way.
"""
from __future__ import annotations

import torch

_TABLE: dict = {}
_I32 = 2 ** 31


def _spec(a):
    if isinstance(a, torch.Tensor):
        return a.dtype, a.data_ptr() % 16 == 0
    if type(a) is int:
        return int, a % 16 == 0, a == 1, -_I32 <= a < _I32
    return type(a), a  # floats are fp32 to Triton whatever their value; bools and None by value


def launch(kernel, grid: tuple, *args, **meta) -> None:
    """kernel[grid](*args, **meta): args are the kernel's leading parameters, meta its constexprs (by
    name) and launch options (num_warps, enable_fp_fusion, ...)."""
    from .backend import triton_interpreting
    if triton_interpreting():
        kernel[grid](*args, **meta)
        return
    device = torch.cuda.current_device()
    key = (kernel, device, *map(_spec, args), *meta.items())
    hit = _TABLE.get(key)
    if hit is None:
        compiled = kernel[grid](*args, **meta)
        tail = _tail(kernel, len(args), meta)
        if tail is not None and hasattr(compiled, "packed_metadata"):
            _TABLE[key] = (compiled, tail)
        return
    from triton import knobs
    if knobs.runtime.launch_enter_hook is not None or knobs.runtime.launch_exit_hook is not None:
        kernel[grid](*args, **meta)
        return
    compiled, tail = hit
    g = (*grid, 1, 1)
    compiled.run(g[0], g[1], g[2], torch._C._cuda_getCurrentRawStream(device), compiled.function,
                 compiled.packed_metadata, None, None, None, *args, *[meta[n] if n in meta else d for n, d in tail])


def _tail(kernel, n_args: int, meta: dict):
    """The parameters after the leading n_args, in signature order, as (name, default): what a launch passes
    after args. None when the kernel is not a plain JITFunction, or a parameter is neither given nor
    defaulted (then Triton itself would have refused the call)."""
    import inspect
    params = getattr(kernel, "params", None)
    if params is None or not hasattr(kernel, "device_caches"):  # an Autotuner or Heuristics wrapper
        return None
    tail = []
    for p in params[n_args:]:
        d = p.default
        if p.name not in meta and d is inspect.Parameter.empty:
            return None
        tail.append((p.name, d))
    return tuple(tail)
