"""The Triton decode kernel (run by Triton's interpreter on the CPU) against the float64 reference backend."""
import os

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":  # tests/conftest.py sets it on a machine without CUDA
    pytest.skip("the kernel runs on CPU tensors under TRITON_INTERPRET=1 only", allow_module_level=True)

from lengthwise.attention import AttnMeta, MaskPattern, attend
from lengthwise.attention.triton_decode import decode_attention

USED = [0, 1, 2, 63, 64, 65, 300]  # empty, single key, block edges, several blocks


def ragged_cache(used, Hkv, D, gap, g):
    """k, v [S, Hkv, D] float32 with each region `gap` rows longer than its keys, the spare rows NaN."""
    cap = [n + gap for n in used]
    cu_k = torch.tensor([0] + torch.tensor(cap).cumsum(0).tolist(), dtype=torch.int32)
    k, v = (torch.randn(sum(cap), Hkv, D, generator=g) for _ in range(2))
    for i, n in enumerate(used):
        k[cu_k[i] + n:cu_k[i + 1]] = float("nan")
        v[cu_k[i] + n:cu_k[i + 1]] = float("nan")
    meta = AttnMeta(torch.arange(len(used) + 1, dtype=torch.int32), 1, cu_k, max(cap),
                    torch.tensor(used, dtype=torch.int32))
    return k, v, meta


@pytest.mark.parametrize("window", [None, 1, 50])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("G", [1, 3, 4])
def test_decode_matches_float64_reference(G, D, window):
    g = torch.Generator().manual_seed(G * 1000 + D + (window or 0))
    Hkv = 2
    k, v, meta = ragged_cache(USED, Hkv, D, gap=5, g=g)
    q = torch.randn(len(USED), G * Hkv, D, generator=g)
    scale = 0.7 * D ** -0.5
    out, lse = decode_attention(q, k, v, meta.cu_k, meta.used_k, scale, window, return_lse=True)
    ref, ref_lse = attend(q.double(), k.double(), v.double(), meta, MaskPattern(causal=True, window=window),
                          "reference", scale, return_lse=True)
    assert out.dtype == torch.float32 and out.shape == q.shape and lse.shape == (len(USED), G * Hkv)
    assert not out.isnan().any()  # the NaN rows past each sequence's keys were never read
    assert (out.double() - ref).abs().max() < 1e-5
    assert (out[0] == 0).all() and lse[0].isneginf().all()  # no keys: out 0, lse -inf
    assert torch.equal(lse.isneginf(), ref_lse.isneginf())
    fin = ref_lse.isfinite()
    assert (lse.double()[fin] - ref_lse[fin]).abs().max() < 1e-5
    assert torch.equal(decode_attention(q, k, v, meta.cu_k, meta.used_k, scale, window), out)


def test_decode_odd_head_dim_and_strided_q():
    """D padded to a power of two inside the kernel; q a view with a head stride that is not D."""
    g = torch.Generator().manual_seed(7)
    used, H, Hkv, D = [3, 70, 0, 129], 6, 2, 80
    k, v, meta = ragged_cache(used, Hkv, D, gap=2, g=g)
    q = torch.randn(len(used), H, 2 * D, generator=g)[..., :D]
    out = decode_attention(q, k, v, meta.cu_k, meta.used_k, D ** -0.5)
    ref = attend(q.double(), k.double(), v.double(), meta, MaskPattern(causal=True), "reference")
    assert (out.double() - ref).abs().max() < 1e-5


def test_triton_decode_routing(monkeypatch):
    from lengthwise import attention
    from lengthwise.attention import Backend, backend as B
    app = attention._triton_decode_applies
    q = torch.zeros(4, 9, 64)
    decode = AttnMeta(torch.arange(5, dtype=torch.int32), 1, torch.arange(5, dtype=torch.int32) * 8, 8)
    causal = MaskPattern(causal=True)
    on, off = Backend("varlen", triton_decode=True), Backend("varlen", triton_decode=False)
    assert not app(q, decode, causal, off)  # LENGTHWISE_TRITON_DECODE=0
    assert app(q, decode, causal, on)
    monkeypatch.setattr(B, "have_triton", lambda: False)  # triton not installed: FlashAttention
    assert not app(q, decode, causal, on)
    monkeypatch.setattr(B, "have_triton", lambda: True)
    assert app(q, decode, MaskPattern(causal=True, window=16), on)
    assert not app(q, decode, causal, Backend("reference")) and not app(q, decode, causal, Backend("cpu_flash"))
    assert not app(q, decode, MaskPattern(causal=False), on)
    prefill = AttnMeta(torch.tensor([0, 3, 4], dtype=torch.int32), 3, torch.tensor([0, 3, 4], dtype=torch.int32), 3)
    assert not app(q, prefill, causal, on)
    one_per_seq_of_two = AttnMeta(torch.tensor([0, 2, 4], dtype=torch.int32), 1, decode.cu_k[:3], 8)
    assert not app(q, one_per_seq_of_two, causal, on)  # 4 queries but 2 sequences


def test_attend_routes_to_the_kernel(monkeypatch):
    """With the flag on, attend(..., "varlen") on a decode step that split-KV leaves whole runs the kernel,
    used_k defaulting to the cu_k spans."""
    from lengthwise import attention
    g = torch.Generator().manual_seed(3)
    used = [5, 0, 70]
    k, v, meta = ragged_cache(used, 1, 64, gap=0, g=g)
    meta.used_k = None
    q = torch.randn(3, 3, 64, generator=g)
    on = attention.Backend("varlen", triton_decode=True, split_kv=True)
    out, lse = attend(q, k, v, meta, MaskPattern(causal=True), on, return_lse=True)
    ref, ref_lse = attend(q.double(), k.double(), v.double(), meta, MaskPattern(causal=True), "reference",
                          return_lse=True)
    assert (out.double() - ref).abs().max() < 1e-5 and lse[1].isneginf().all()


def test_heads_must_group():
    from lengthwise import LengthwiseError
    z = torch.zeros(2, 4, 8)
    with pytest.raises(LengthwiseError, match="multiple of kv heads"):
        decode_attention(torch.zeros(1, 4, 8), z.new_zeros(2, 3, 8), z.new_zeros(2, 3, 8),
                         torch.tensor([0, 2], dtype=torch.int32), torch.tensor([2], dtype=torch.int32), 1.0)


def test_decode_float16():
    """The low-precision path (P cast to V's dtype before P @ V); bf16 is the GPU check's to test, since
    Triton 3.6's interpreter computes tl.dot wrongly in bfloat16."""
    g = torch.Generator().manual_seed(5)
    k, v, meta = ragged_cache(USED, 3, 64, gap=3, g=g)
    q = torch.randn(len(USED), 9, 64, generator=g)
    q, k, v = q.half(), k.half(), v.half()
    out = decode_attention(q, k, v, meta.cu_k, meta.used_k, 64 ** -0.5, 50)
    ref = attend(q.double(), k.double(), v.double(), meta, MaskPattern(causal=True, window=50), "reference")
    assert out.dtype == torch.float16 and not out.isnan().any()
    assert (out.double() - ref).norm() / ref.norm() < 1e-3


def test_split_kv_keeps_the_decode_steps_it_splits(monkeypatch):
    """Long keys for few sequences: split-KV, not the one-program-per-group kernel, takes the step."""
    from lengthwise import attention
    from lengthwise.attention import split_kv
    g = torch.Generator().manual_seed(4)
    k, v, meta = ragged_cache([5, 0, 70], 1, 64, gap=0, g=g)
    q = torch.randn(3, 3, 64, generator=g)
    monkeypatch.setattr(split_kv, "MIN_CHUNK", 16)  # 70 keys now make 4 chunks
    seen = []
    monkeypatch.setattr(attention, "attend_split", lambda *a, **kw: seen.append(a[-2]) or "split")
    on = attention.Backend("varlen", triton_decode=True, split_kv=True)
    assert attend(q, k, v, meta, MaskPattern(causal=True), on) == "split" and seen == [4]


def _rope_tables(B, D, dtype, g):
    from lengthwise.positions import Tables
    pos = torch.randint(0, 5000, (B,), generator=g).double()
    inv = 10000.0 ** (-torch.arange(0, D, 2).double() / D)
    ang = torch.cat([pos[:, None] * inv] * 2, dim=-1)
    return Tables.of(ang.cos().float(), ang.sin().float(), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("window", [None, 1, 50])
@pytest.mark.parametrize("G", [1, 3])
def test_fused_rope_cache_decode_matches_the_unfused_step(G, window, dtype):
    """rope_cache_decode against what the model does without it: Tables.apply, two cache writes and the
    float64 reference attention. The cached rows must be exactly Tables.apply's (same rounding)."""
    from lengthwise.attention.triton_decode import rope_cache_decode
    g = torch.Generator().manual_seed(G * 100 + (window or 0) + dtype.itemsize)
    Hkv, D, used = 2, 64, [1, 2, 64, 65, 66, 300]  # used counts the new key
    H = G * Hkv
    k, v, meta = ragged_cache(used, Hkv, D, gap=4, g=g)
    k, v = k.to(dtype), v.to(dtype)
    slots = (meta.cu_k[:-1] + meta.used_k - 1).long()
    k[slots], v[slots] = float("nan"), float("nan")  # the new rows: written by the kernel
    qkv = torch.randn(len(used), H + 2 * Hkv, D, generator=g).to(dtype)
    tables = _rope_tables(len(used), D, dtype, g)
    k_ours, v_ours = k.clone(), v.clone()
    out = rope_cache_decode(qkv, tables, k_ours, v_ours, slots, meta.cu_k, meta.used_k, D ** -0.5, window)

    qk = tables.apply(qkv[:, :H + Hkv])
    k[slots], v[slots] = qk[:, H:], qkv[:, H + Hkv:]
    assert torch.equal(k_ours[slots], k[slots]) and torch.equal(v_ours[slots], v[slots])
    rest = torch.ones(k.shape[0], dtype=torch.bool)
    rest[slots] = False
    assert torch.equal(k_ours[rest].isnan(), k[rest].isnan())  # nothing else written
    ref = attend(qk[:, :H].double(), k.double(), v.double(), meta, MaskPattern(causal=True, window=window),
                 "reference")
    assert out.dtype == dtype and out.shape == (len(used), H, D) and not out.isnan().any()
    bound = 1e-5 if dtype == torch.float32 else 2e-3
    assert (out.double() - ref).norm() / ref.norm() < bound


def test_fused_step_checks_its_rows():
    from lengthwise import LengthwiseError
    from lengthwise.attention.triton_decode import rope_cache_decode
    g = torch.Generator().manual_seed(1)
    k, v, meta = ragged_cache([2, 3], 1, 16, gap=1, g=g)
    with pytest.raises(LengthwiseError, match="one RoPE row, slot and key count per sequence"):
        rope_cache_decode(torch.zeros(2, 5, 16), _rope_tables(3, 16, torch.float32, g), k, v,
                          torch.tensor([1, 5]), meta.cu_k, meta.used_k, 0.25)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cache", [False, True])
def test_rope_prefill_matches_tables_apply(cache, dtype):
    """rope_prefill rotates queries and keys exactly as Tables.apply does, and with a cache writes the rotated
    keys and the values to the given slots and nowhere else."""
    from lengthwise.attention.triton_decode import rope_prefill
    g = torch.Generator().manual_seed(11 + cache)
    T, H, Hkv, D = 7, 6, 2, 64
    qkv = torch.randn(T, H + 2 * Hkv, D, generator=g).to(dtype)
    tables = _rope_tables(T, D, dtype, g)
    want = tables.apply(qkv[:, :H + Hkv])
    if not cache:
        got = rope_prefill(qkv, tables, Hkv)
        assert got.is_contiguous() and torch.equal(got, want)
        return
    k = torch.full((20, Hkv, D), float("nan"), dtype=dtype)
    v = k.clone()
    slots = torch.tensor([3, 4, 5, 10, 11, 12, 13])
    got = rope_prefill(qkv, tables, Hkv, k, v, slots)
    assert torch.equal(got, want)
    assert torch.equal(k[slots], want[:, H:]) and torch.equal(v[slots], qkv[:, H + Hkv:])
    rest = torch.ones(20, dtype=torch.bool)
    rest[slots] = False
    assert k[rest].isnan().all() and v[rest].isnan().all()
    assert rope_prefill(qkv[:0], _rope_tables(0, D, dtype, g), Hkv).shape == (0, H + Hkv, D)
