"""The fused decode kernels (run by Triton's interpreter on the CPU) against float64 and against torch's own ops."""
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":  # tests/conftest.py sets it on a machine without CUDA
    pytest.skip("the kernels run on CPU tensors under TRITON_INTERPRET=1 only", allow_module_level=True)

from conftest import rel_err

from lengthwise import LengthwiseError
from lengthwise.attention import triton_fused as fused
from lengthwise.attention.triton_fused import add_layer_norm, add_rms_norm, silu_mul

U = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}  # unit roundoff


def within(a, ref, rtol, atol=1e-6):
    """Every element of a within rtol * |ref| + atol of the float64 ref."""
    err = (a.double() - ref).abs()
    return bool((err <= rtol * ref.abs() + atol).all()), (err / (ref.abs() + atol)).max().item()


def agrees(a, ref, dtype):
    """a equals torch's result in `dtype`: near-exact in float32; in 16 bits bitwise in >= 99% of elements
    and within 2 ulps everywhere (float32 noise, e.g. numpy's exp against torch's, may flip a near tie,
    and a flipped silu moves silu * up by up to 2 ulps)."""
    if dtype == torch.float32:
        return rel_err(a, ref) <= 1e-6
    near = (a.float() - ref.float()).abs() <= 4 * U[dtype] * ref.float().abs() + 1e-6
    return (a == ref).float().mean().item() >= 0.99 and bool(near.all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])  # weight, y and output
@pytest.mark.parametrize("with_y", [True, False])
@pytest.mark.parametrize("T,dim,scale", [(1, 64, 1.0), (5, 576, 1.0), (3, 576, 3e-3)])  # scale 3e-3: eps counts
def test_add_rms_norm(T, dim, scale, with_y, dtype, norm_rows):
    g = torch.Generator().manual_seed(T * 1000 + dim)
    eps = 1e-5
    x = torch.randn(T, dim, generator=g) * scale
    y = (torch.randn(T, dim, generator=g) * scale).to(dtype) if with_y else None
    w = (1 + 0.5 * torch.randn(dim, generator=g)).to(dtype)
    x0 = x.clone()
    residual, normed = add_rms_norm(x, y, w, eps, dtype)

    assert torch.equal(x, x0)  # never written in place
    assert normed.shape == (T, dim) and normed.dtype == dtype and residual.dtype == torch.float32
    r64 = x.double() + (0 if y is None else y.double())
    if y is None:
        assert residual is x
    else:  # the float64 sum of two floats is exact, so float32's own add is its rounding
        assert residual.data_ptr() != x.data_ptr() and torch.equal(residual, r64.float())
    ref64 = r64 * torch.rsqrt(r64.pow(2).mean(-1, keepdim=True) + eps) * w.double()
    ok, worst = within(normed, ref64, U[dtype] * 1.05 + 1e-5)  # one rounding to the dtype, float32 noise
    assert ok, worst
    ref = F.rms_norm(residual, (dim,), w.to(torch.float32), eps).to(dtype)  # the torch code it replaces
    assert agrees(normed, ref, dtype)


def test_add_rms_norm_strided_rows_and_fp16_weight_with_fp32_output(norm_rows):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, 1300, generator=g)[:, 50:50 + 2 * 576:2]  # rows at a stride of 1300, columns of 2
    y = torch.randn(4, 700, generator=g).half()[:, 100:676]  # rows of 576 at a stride of 700
    w = torch.randn(576, generator=g).half()
    residual, normed = add_rms_norm(x, y, w, 1e-6, torch.float32)
    r64 = x.double() + y.double()
    assert residual.is_contiguous() and torch.equal(residual, r64.float())
    ok, worst = within(normed, r64 * torch.rsqrt(r64.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double(), 1e-5)
    assert ok, worst
    assert rel_err(normed, F.rms_norm(r64.float(), (576,), w.float(), 1e-6)) <= 1e-6


@pytest.fixture(params=[1, 10 ** 9], ids=["rows-per-program", "row-per-program"])
def norm_rows(request, monkeypatch):
    """Both launch shapes of the add-norm kernel: several rows per program (a prefill's) and one (a decode's)."""
    monkeypatch.setattr(fused, "NORM_ROWS_FROM", request.param)


@pytest.mark.parametrize("x_dtype,y_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16),
                                             (torch.float16, torch.float16), (torch.float32, torch.float32)])
@pytest.mark.parametrize("T,dim,scale", [(1, 64, 1.0), (5, 768, 1.0), (3, 384, 3e-3), (2, 100, 20.0)])
def test_add_layer_norm(T, dim, scale, x_dtype, y_dtype, norm_rows):
    """Post-LN's LayerNorm(x + y): the sum rounded to x's dtype, then LayerNorm in float32, out in x's dtype."""
    g = torch.Generator().manual_seed(T * 1000 + dim)
    eps = 1e-12
    x = (torch.randn(T, dim, generator=g) * scale + 0.3 * scale).to(x_dtype)  # a mean off zero: the centring counts
    y = (torch.randn(T, dim, generator=g) * scale).to(y_dtype)
    w = (1 + 0.5 * torch.randn(dim, generator=g)).to(y_dtype)
    b = (0.1 * torch.randn(dim, generator=g)).to(y_dtype)
    x0 = x.clone()
    out = add_layer_norm(x, y, w, b, eps)
    assert torch.equal(x, x0) and out.shape == (T, dim) and out.dtype == x_dtype
    s64 = (x.double() + y.double()).to(x_dtype).double()  # torch's add rounds the sum to x's dtype
    ref64 = F.layer_norm(s64, (dim,), w.double(), b.double(), eps)
    ok, worst = within(out, ref64, U[x_dtype] * 1.05 + 1e-5, atol=1e-5)
    assert ok, worst
    ref = F.layer_norm((x + y).to(x_dtype).float(), (dim,), w.float(), b.float(), eps).to(x_dtype)  # the code it replaces
    assert agrees(out, ref, x_dtype)


def test_add_layer_norm_strided_rows(norm_rows):
    g = torch.Generator().manual_seed(12)
    x = torch.randn(4, 1000, generator=g).bfloat16()[:, 100:484]  # rows of 384 at a stride of 1000
    y = torch.randn(384, 4, generator=g).bfloat16().t()  # transposed: columns at a stride of 4
    w, b = torch.randn(384, generator=g), torch.randn(768, generator=g)[::2]
    out = add_layer_norm(x, y, w, b, 1e-5)
    ref64 = F.layer_norm((x + y).double(), (384,), w.double(), b.double(), 1e-5)
    ok, worst = within(out, ref64, U[torch.bfloat16] * 1.05 + 1e-5, atol=1e-5)
    assert ok, worst


def test_empty_batches_launch_nothing(monkeypatch):
    monkeypatch.setattr(fused, "_kernels", lambda: pytest.fail("launched a kernel for no rows"))
    x = torch.zeros(0, 576)
    residual, normed = add_rms_norm(x, torch.zeros(0, 576, dtype=torch.bfloat16), torch.ones(576), 1e-5,
                                    torch.bfloat16)
    assert residual.shape == normed.shape == (0, 576) and normed.dtype == torch.bfloat16
    residual, normed = add_rms_norm(x, None, torch.ones(576), 1e-5, torch.float16)
    assert residual is x and normed.shape == (0, 576)
    out = silu_mul(torch.zeros(0, 200, dtype=torch.float16))
    assert out.shape == (0, 100) and out.dtype == torch.float16
    out = add_layer_norm(torch.zeros(0, 768, dtype=torch.bfloat16), torch.zeros(0, 768, dtype=torch.bfloat16),
                         torch.ones(768), torch.zeros(768), 1e-12)
    assert out.shape == (0, 768) and out.dtype == torch.bfloat16


def gate_up(T, h, dtype, layout, g):
    """gu [T, 2h] laid out as asked: contiguous, a column slice of a wider tensor, or transposed."""
    if layout == "slice":
        return torch.randn(T, 2 * h + 9, generator=g).to(dtype)[:, 4:4 + 2 * h]
    if layout == "transposed":
        return torch.randn(2 * h, T, generator=g).to(dtype).t()
    return torch.randn(T, 2 * h, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T,h,layout", [(1, 100, "contiguous"), (3, 1536, "contiguous"), (2, 1536, "slice"),
                                        (3, 100, "transposed")])  # 1536: one full column block, one partial
def test_silu_mul(T, h, layout, dtype):
    g = torch.Generator().manual_seed(T * 10000 + h)
    gu = gate_up(T, h, dtype, layout, g) * 3  # gates out to where silu bends and saturates
    out = silu_mul(gu)
    assert out.shape == (T, h) and out.dtype == dtype
    gate, up = gu.double().chunk(2, dim=-1)
    ok, worst = within(out, F.silu(gate) * up, 2.1 * U[dtype] + 1e-6)  # two roundings: silu, then the product
    assert ok, worst
    gate, up = gu.chunk(2, dim=-1)
    assert agrees(out, F.silu(gate) * up, dtype)  # torch's two kernels in the dtype


def test_bad_inputs():
    x, w = torch.zeros(2, 64), torch.ones(64)
    bad = [
        (lambda: add_rms_norm(x.bfloat16(), None, w, 1e-5, torch.float32), "x must be a float32"),
        (lambda: add_rms_norm(x[0], None, w, 1e-5, torch.float32), r"x must be a float32 \[T, dim\]"),
        (lambda: add_rms_norm(x, torch.zeros(2, 32), w, 1e-5, torch.float32), "y must match x"),
        (lambda: add_rms_norm(x, torch.zeros(2, 64, dtype=torch.int32), w, 1e-5, torch.float32), "y must match"),
        (lambda: add_rms_norm(x, torch.zeros(2, 64, device="meta"), w, 1e-5, torch.float32), "y must match"),
        (lambda: add_rms_norm(x, None, torch.ones(65), 1e-5, torch.float32), r"weight must be \[64\]"),
        (lambda: add_rms_norm(x, None, w.long(), 1e-5, torch.float32), "weight must be"),
        (lambda: add_rms_norm(x, None, w, 1e-5, torch.float64), "out_dtype must be"),
        (lambda: add_rms_norm(torch.zeros(2, 0), None, torch.ones(0), 1e-5, torch.float32), "dim 0 is outside"),
        (lambda: add_rms_norm(torch.zeros(1, 20000), None, torch.ones(20000), 1e-5, torch.float32), "dim 20000"),
        (lambda: silu_mul(torch.zeros(2, 3)), "not gate and up of equal width"),
        (lambda: add_layer_norm(x.long(), x, w, w, 1e-5), "add_layer_norm: x must be a float32/float16/bfloat16"),
        (lambda: add_layer_norm(x, x, w, torch.ones(63), 1e-5), r"bias must be \[64\]"),
        (lambda: add_layer_norm(x, x[:1], w, w, 1e-5), "y must match x"),
        (lambda: silu_mul(torch.zeros(8)), r"gu must be \[T, 2h\]"),
        (lambda: silu_mul(torch.zeros(2, 8, dtype=torch.int64)), "gu must be"),
    ]
    for call, match in bad:
        with pytest.raises(LengthwiseError, match=match):
            call()
