"""The Triton prefill kernel (run by Triton's interpreter on the CPU) against the float64 reference backend."""
import os

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":  # tests/conftest.py sets it on a machine without CUDA
    pytest.skip("the kernel runs on CPU tensors under TRITON_INTERPRET=1 only", allow_module_level=True)

from lengthwise.attention import AttnMeta, MaskPattern, attend
from lengthwise.attention.triton_prefill import BLOCK_M, block_table, prefill_attention


def packed(lens, H, Hkv, D, g, dtype=torch.float32):
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    T = sum(lens)
    q = torch.randn(T, H, D, generator=g).to(dtype)
    k, v = (torch.randn(T, Hkv, D, generator=g).to(dtype) for _ in range(2))
    return q, k, v, AttnMeta.packed(cu, max(lens))


@pytest.mark.parametrize("window", [None, 1, 70])
@pytest.mark.parametrize("G", [1, 3])
def test_prefill_matches_float64_reference(G, window):
    """Sequences shorter than, equal to and across block edges (BLOCK_M 128, BLOCK_N 64)."""
    g = torch.Generator().manual_seed(G * 10 + (window or 0))
    q, k, v, meta = packed([1, 5, 64, 128, 129, 300], 2 * G, 2, 32, g)
    out = prefill_attention(q, k, v, meta.cu_q, 0.3, window)
    ref = attend(q.double(), k.double(), v.double(), meta, MaskPattern(causal=True, window=window), "reference", 0.3)
    assert out.shape == q.shape and not out.isnan().any()
    assert (out.double() - ref).abs().max() < 1e-5


def test_prefill_float16():
    g = torch.Generator().manual_seed(2)
    q, k, v, meta = packed([7, 200, 130], 4, 2, 64, g, torch.float16)
    out = prefill_attention(q, k, v, meta.cu_q, 64 ** -0.5)
    ref = attend(q.double(), k.double(), v.double(), meta, MaskPattern(causal=True), "reference")
    assert out.dtype == torch.float16 and (out.double() - ref).norm() / ref.norm() < 1e-3


def test_block_table_covers_every_query_once_heaviest_first():
    cu = torch.tensor([0, 1, 129, 130, 500, 756], dtype=torch.int32)  # lengths 1, 128, 1, 370, 256
    seq, start, count = block_table(cu, 756)
    n = int(count)
    assert n == 1 + 1 + 1 + 3 + 2 and seq.numel() == 756 // BLOCK_M + 5
    blocks = sorted(zip(seq[:n].tolist(), start[:n].tolist()))
    assert blocks == [(0, 0), (1, 0), (2, 0), (3, 0), (3, 128), (3, 256), (4, 0), (4, 128)]
    assert start[:n].tolist() == sorted(start[:n].tolist(), reverse=True)


def test_attend_routes_packed_causal_prefill_only():
    from lengthwise import attention
    from lengthwise.attention import Backend
    g = torch.Generator().manual_seed(3)
    q, k, v, meta = packed([3, 140], 2, 1, 32, g)
    app = attention._triton_prefill_applies
    at = lambda n: Backend("varlen", triton_prefill=True, triton_prefill_min=n)
    assert not app(q, k, meta, MaskPattern(causal=True), at(141), False)  # the longest sequence here has 140 tokens
    on = at(140)
    assert app(q, k, meta, MaskPattern(causal=True), on, False)
    assert not app(q, k, meta, MaskPattern(causal=False), on, False)  # bidirectional: FlashAttention
    assert not app(q, k, meta, MaskPattern(causal=True), on, True)  # the LSE is FlashAttention's
    assert not app(q, k, meta, MaskPattern(causal=True), "reference", False)
    cached = AttnMeta(meta.cu_q, meta.max_q, meta.cu_q.clone(), meta.max_k)  # keys in a cache region
    assert not app(q, k, cached, MaskPattern(causal=True), on, False)
    routed = attend(q, k, v, meta, MaskPattern(causal=True), on)  # on the CPU only the kernel can serve it
    assert torch.equal(routed, prefill_attention(q, k, v, meta.cu_q, 32 ** -0.5))
    assert not app(q, k, meta, MaskPattern(causal=True), Backend("varlen", triton_prefill=False, triton_prefill_min=140), False)


def test_prefill_odd_head_dim_gqa_window_and_strided_views():
    """D padded inside the kernel (80), GQA 4:1, a window, q/k/v as views of one packed qkv tensor."""
    g = torch.Generator().manual_seed(9)
    lens, H, Hkv, D = [129, 7, 200], 8, 2, 80
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    qkv = torch.randn(sum(lens), H + 2 * Hkv, D, generator=g)
    q, k, v = qkv[:, :H], qkv[:, H:H + Hkv], qkv[:, H + Hkv:]
    meta = AttnMeta.packed(cu, max(lens))
    out = prefill_attention(q, k, v, cu, D ** -0.5, 33)
    ref = attend(q.double(), k.double(), v.double(), meta, MaskPattern(causal=True, window=33), "reference")
    assert (out.double() - ref).abs().max() < 1e-5


def test_prefill_rejects_what_it_cannot_serve():
    from lengthwise import LengthwiseError
    z = torch.zeros(4, 3, 16)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(LengthwiseError, match="multiple of kv heads"):
        prefill_attention(z, torch.zeros(4, 2, 16), torch.zeros(4, 2, 16), cu, 1.0)
    with pytest.raises(LengthwiseError, match="packed self-attention"):
        prefill_attention(z, torch.zeros(5, 3, 16), torch.zeros(5, 3, 16), cu, 1.0)
    with pytest.raises(LengthwiseError, match="v shaped as k"):
        prefill_attention(z, torch.zeros(4, 3, 16), torch.zeros(4, 3, 8), cu, 1.0)


def test_prefill_columns_with_a_stride():
    """A last dimension that is not contiguous is copied first: the kernel steps columns by 1."""
    g = torch.Generator().manual_seed(12)
    q, k, v, meta = packed([9, 130], 4, 2, 32, g)
    q2 = torch.randn(q.shape[0], 4, 64, generator=g)[..., ::2]
    q2.copy_(q)
    assert q2.stride(-1) == 2
    assert torch.equal(prefill_attention(q2, k, v, meta.cu_q, 0.2), prefill_attention(q, k, v, meta.cu_q, 0.2))
