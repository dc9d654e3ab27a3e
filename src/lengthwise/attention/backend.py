"""Backend: the kernel family and every switch of the fast paths, resolved once at `lw.load()`.

    b = Backend.resolve("auto", device, dtype)          # what lw.load does
    b = dataclasses.replace(b, triton_decode=False)     # a benchmark flips one switch
    lm = lw.load("smollm2-135m", backend=b)

The kernel family is `reference` (pure torch, any device, the float64-checkable twin), `cpu_flash` (torch's
fused CPU flash kernel) or `varlen` (FlashAttention varlen on CUDA, with lengthwise's Triton kernels where
triton is installed). The switches only matter for `varlen`. Environment variables seed their defaults
(LENGTHWISE_TRITON_DECODE, _TRITON_PREFILL, _TRITON_PREFILL_MIN, _SPLIT_KV, _FUSED, _GELU_EPILOGUE,
_ONE_PASS_REMAP: "0" turns one off); this is the one module that reads them, and only when a Backend is resolved.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, fields

import torch

from ..errors import LengthwiseError

KERNELS = ("reference", "cpu_flash", "varlen")
CPU_FLASH_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ENV = {"triton_decode": "LENGTHWISE_TRITON_DECODE", "triton_prefill": "LENGTHWISE_TRITON_PREFILL",
        "triton_prefill_min": "LENGTHWISE_TRITON_PREFILL_MIN", "split_kv": "LENGTHWISE_SPLIT_KV",
        "fused": "LENGTHWISE_FUSED", "gelu_epilogue": "LENGTHWISE_GELU_EPILOGUE",
        "one_pass_remap": "LENGTHWISE_ONE_PASS_REMAP"}


@dataclass(frozen=True)
class Backend:
    kernel: str = "reference"
    # varlen decode steps that split-KV leaves whole run on the GQA-grouped Triton decode kernel, and the model's
    # decode-step attention (RoPE, cache writes, attention) is one fused kernel (triton_decode.py)
    triton_decode: bool = True
    # packed causal prefills whose longest sequence has at least triton_prefill_min tokens run on the Triton
    # prefill kernel (triton_prefill.py); shorter packs measured faster on FlashAttention (docs/benchmarks.md)
    triton_prefill: bool = True
    triton_prefill_min: int = 1024
    split_kv: bool = True  # long, narrow decode steps split their keys in chunks (split_kv.py)
    fused: bool = True  # residual add + norm, SiLU * up and prefill RoPE + cache write in Triton (triton_fused.py)
    gelu_epilogue: bool = True  # BERT's FFN bias + GELU in cuBLASLt's epilogue (linear_act)
    # a remap's decode step (SelfExtend, distance_cap, STRING) reads each cached key once, near and far region in
    # one Triton kernel (triton_two_region.py); off: a near and a far pass merged by log-sum-exp (two_region.py)
    one_pass_remap: bool = True

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise LengthwiseError(f"unknown attention backend {self.kernel!r}: choose one of {', '.join(KERNELS)} or auto")
        for f in fields(self)[1:]:
            v = getattr(self, f.name)
            if f.type in (bool, "bool") and not isinstance(v, bool) or f.name == "triton_prefill_min" and (
                    not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise LengthwiseError(f"Backend: {f.name} must be {'true or false' if f.type in (bool, 'bool') else 'an integer >= 0'}, got {v!r}")

    @classmethod
    def from_env(cls, kernel: str = "reference") -> "Backend":
        """The kernel family with each switch's default from its environment variable, if set."""
        kw = {}
        for name, var in _ENV.items():
            text = os.environ.get(var)
            if text is None:
                continue
            if name == "triton_prefill_min":
                try:
                    kw[name] = int(text)
                except ValueError:
                    raise LengthwiseError(f"{var}={text!r} is not an integer: set it to a token count, or unset it") from None
            else:
                kw[name] = text != "0"
        return cls(kernel, **kw)

    @classmethod
    def of(cls, b: "Backend | str") -> "Backend":
        """A Backend as given, or a kernel family's name with the defaults (no device check: internal calls)."""
        return b if isinstance(b, Backend) else cls.from_env(b)

    @classmethod
    def resolve(cls, name: "str | Backend | None", device, dtype: torch.dtype) -> "Backend":
        """auto: FlashAttention varlen on a GPU in fp16/bf16, torch's fused CPU kernel on a CPU, else the
        reference (float64 always runs on the reference, the exact twin every fast backend is checked against).
        A named family is checked against the device and dtype."""
        device = torch.device(device)
        if isinstance(name, Backend):
            b = name
        elif name in (None, "auto"):
            if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
                return _varlen_ready(cls.from_env("varlen"))
            return cls.from_env("cpu_flash" if device.type == "cpu" and dtype in CPU_FLASH_DTYPES else "reference")
        elif isinstance(name, str):
            b = cls.from_env(name)
        else:
            raise LengthwiseError(f"backend must be a name ({', '.join(KERNELS)}, auto) or a Backend, got {name!r}")
        if b.kernel == "varlen" and (device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16)):
            raise LengthwiseError("the varlen backend needs a CUDA device and float16/bfloat16: use --backend reference")
        if b.kernel == "cpu_flash" and (device.type != "cpu" or dtype not in CPU_FLASH_DTYPES):
            raise LengthwiseError("the cpu_flash backend needs the CPU and float32/bfloat16/float16: "
                                  "use --backend reference")
        return _varlen_ready(b)

    def triton(self, t: torch.Tensor) -> bool:
        """Our Triton kernels may run on t: the varlen family, triton installed, and neither inside
        torch.compile (the compiler fuses on its own) nor where t needs a gradient (they have no backward)."""
        return (self.kernel == "varlen" and have_triton() and not torch.compiler.is_compiling()
                and not (t.requires_grad and torch.is_grad_enabled()))

    # The fused layers (triton_fused.py, imported on first use, so that importing a model loads no kernel file).
    # A model asks `fuses` once per forward and, where it holds, takes the kernels from these properties once
    # and runs its residual adds + norms and SiLU * up through them: no model imports a kernel file.
    def fuses(self, x: torch.Tensor, dtypes: tuple = (torch.float32,)) -> bool:
        """The fused layers apply to residual stream x (triton_fused.fused_applies)."""
        return _fused().fused_applies(x, self, dtypes)

    @property
    def add_rms_norm(self):
        """(x, y, weight, eps, out_dtype) -> (x + y, RMSNorm(x + y) * weight) in one kernel."""
        return _fused().add_rms_norm

    @property
    def add_layer_norm(self):
        """(x, y, weight, bias, eps) -> LayerNorm(x + y) in one kernel."""
        return _fused().add_layer_norm

    @property
    def silu_mul(self):
        """gu = [gate | up] -> SiLU(gate) * up in one kernel."""
        return _fused().silu_mul

    def linear_act(self, x: torch.Tensor, linear, act, gelu: bool) -> torch.Tensor:
        """act(linear(x)) [T, out], the bias and GELU in the GEMM's epilogue where that applies (gelu: act is a
        GELU): cuBLASLt (CUDA, 16-bit weights; torch.compile keeps the call), one pass over the [T, 3072]
        activation instead of two. Its GELU is the tanh form: exact for tanh-GELU models and, for erf-GELU ones
        (BERT's "gelu"), within 5e-4 absolute of erf, under bf16 rounding (2^-8 relative). The varlen family
        only (gelu_epilogue); the reference keeps torch's exact GELU."""
        if (self.gelu_epilogue and gelu and self.kernel == "varlen" and x.is_cuda and linear.bias is not None
                and x.dtype in (torch.float16, torch.bfloat16)):
            return torch._addmm_activation(linear.bias, x, linear.weight.t(), use_gelu=True)
        return act(linear(x))

    def __str__(self) -> str:
        return self.kernel


def _varlen_ready(b: Backend) -> Backend:
    """Import FlashAttention's varlen entry at load (its module imports torch._dynamo), not in the first forward."""
    if b.kernel == "varlen":
        from . import varlen
        if varlen._PARAMS is None:
            varlen._load()
    return b


@functools.cache
def have_triton() -> bool:
    try:
        import triton  # noqa: F401
        return True
    except ImportError:
        return False


def triton_interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton runs kernels on CPU tensors, and its interpreter needs our fixes."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it t's for the launch (on cuda:N with N not current);
    a no-op on the current device and on the CPU (the interpreter)."""
    if t.is_cuda and t.device.index is not None and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


_FUSED = None


def _fused():
    """The triton_fused module, imported on first use (it imports triton only when a kernel first runs)."""
    global _FUSED
    if _FUSED is None:
        from . import triton_fused
        _FUSED = triton_fused
    return _FUSED
