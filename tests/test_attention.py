"""Attention backends against a dense float64 computation over the whole packed stream."""
import pytest
import torch

from lengthwise.attention import AttnMeta, MaskPattern, attend
from lengthwise.kv import RaggedKVCache


def dense_reference(q, k, v, q_seq, k_seq, q_pos, k_pos, mask):
    """Float64 attention over all T tokens with an explicit [Tq, Tk] mask: same sequence, plus the pattern."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    s = torch.einsum("qhd,khd->hqk", q.double(), k) / q.shape[-1] ** 0.5
    ok = (q_seq[:, None] == k_seq[None, :]) & mask.allowed(q_pos, k_pos)
    s = s.masked_fill(~ok, float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v)


@pytest.mark.parametrize("mask", [MaskPattern(causal=True), MaskPattern(causal=False), MaskPattern(causal=True, window=5)])
@pytest.mark.parametrize("lens", [[1], [3, 17, 1, 9], [40, 2]])
def test_reference_packed_matches_dense(mask, lens):
    g = torch.Generator().manual_seed(sum(lens))
    T, H, Hkv, D = sum(lens), 4, 2, 8
    q, k, v = (torch.randn(T, h, D, generator=g) for h in (H, Hkv, Hkv))
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    seq = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    pos = torch.arange(T) - cu[:-1].long()[seq]
    out = attend(q, k, v, AttnMeta.packed(cu, max(lens)), mask, "reference")
    ref = dense_reference(q, k, v, seq, seq, pos, pos, mask)
    assert (out.double() - ref).abs().max() < 1e-5


def test_cache_regions_with_gaps_match_dense():
    """Decode against a ragged cache: each sequence reads only its own used slots, never the gaps."""
    g = torch.Generator().manual_seed(1)
    lens, Hkv, D = [5, 1, 12], 2, 8
    cache = RaggedKVCache(1, [n + 4 for n in lens], Hkv, D, torch.float32, "cpu")
    cache.k.fill_(float("nan"))  # unused slots are poison: reading one would show
    cache.v.fill_(float("nan"))
    seqs = torch.arange(3)
    slots, pos, meta = cache.plan(seqs, torch.tensor(lens))
    k, v = torch.randn(sum(lens), Hkv, D, generator=g), torch.randn(sum(lens), Hkv, D, generator=g)
    cache.k[0, slots], cache.v[0, slots] = k, v
    # one decode step for sequences 0 and 2 only
    active = torch.tensor([0, 2])
    slots2, pos2, meta2 = cache.plan(active, torch.ones(2, dtype=torch.long))
    assert pos2.tolist() == [5, 12]
    k2, v2 = torch.randn(2, Hkv, D, generator=g), torch.randn(2, Hkv, D, generator=g)
    cache.k[0, slots2], cache.v[0, slots2] = k2, v2
    q = torch.randn(2, 4, D, generator=g)
    out = attend(q, cache.k[0], cache.v[0], meta2, MaskPattern(causal=True), "reference")
    assert not out.isnan().any()
    for j, (i, n) in enumerate([(0, 5), (2, 12)]):
        start = sum(lens[:i])
        kk = torch.cat([k[start:start + n], k2[j:j + 1]])
        vv = torch.cat([v[start:start + n], v2[j:j + 1]])
        p = torch.arange(n + 1)
        ref = dense_reference(q[j:j + 1], kk, vv, torch.zeros(1), torch.zeros(n + 1), p[-1:], p, MaskPattern())
        assert (out[j:j + 1].double() - ref).abs().max() < 1e-5


def test_cache_overflow_is_an_error():
    cache = RaggedKVCache(1, [2], 1, 4, torch.float32, "cpu")
    cache.plan(torch.tensor([0]), torch.tensor([2]))
    from lengthwise import LengthwiseError
    with pytest.raises(LengthwiseError, match="overflow"):
        cache.plan(torch.tensor([0]), torch.tensor([1]))


def _case(lens_q, lens_k, H=4, Hkv=2, D=8, seed=0, dtype=torch.float32):
    """Packed queries and keys per sequence, queries aligned to the end of their keys (lens_q <= or > lens_k)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(lens_q), H, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(sum(lens_k), Hkv, D, generator=g, dtype=torch.float64) for _ in range(2))
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    meta = AttnMeta(cu_q, max(lens_q), cu_k, max(lens_k))
    q_seq = torch.repeat_interleave(torch.arange(len(lens_q)), torch.tensor(lens_q))
    k_seq = torch.repeat_interleave(torch.arange(len(lens_k)), torch.tensor(lens_k))
    k_pos = torch.arange(sum(lens_k)) - cu_k[:-1].long()[k_seq]
    q_pos = torch.arange(sum(lens_q)) - cu_q[:-1].long()[q_seq] + (torch.tensor(lens_k) - torch.tensor(lens_q))[q_seq]
    return q, k, v, meta, (q_seq, k_seq, q_pos, k_pos)


def _dense_lse(q, k, v, q_seq, k_seq, q_pos, k_pos, mask):
    rep = q.shape[1] // k.shape[1]
    s = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(rep, 1)) / q.shape[-1] ** 0.5
    ok = (q_seq[:, None] == k_seq[None, :]) & mask.allowed(q_pos, k_pos)
    return torch.logsumexp(s.masked_fill(~ok, float("-inf")), -1).T  # [Tq, H]


@pytest.mark.parametrize("mask", [MaskPattern(causal=True), MaskPattern(causal=False), MaskPattern(causal=True, window=5),
                                  MaskPattern(causal=True, window=700)])
@pytest.mark.parametrize("lens_q,lens_k", [
    ([3, 17, 1, 9], [3, 17, 1, 9]),  # packed prefill
    ([1, 1, 1], [6, 1, 30]),  # decode: one query per sequence
    ([4, 10], [9, 10]),  # a chunk of queries after a cached prefix
    ([12, 5], [4, 0]),  # fewer keys than queries (a far pass): the first queries see nothing
    ([2500], [2600]),  # more queries than one masked block
])
def test_cpu_flash_matches_float64(mask, lens_q, lens_k):
    q, k, v, meta, where = _case(lens_q, lens_k, seed=len(lens_q) + sum(lens_k))
    out, lse = attend(q.float(), k.float(), v.float(), meta, mask, "cpu_flash", return_lse=True)
    ref = dense_reference(q, k, v, *where, mask).nan_to_num(0.0)  # a query that sees nothing: 0
    ref_lse = _dense_lse(q, k, v, *where, mask)
    assert (out.double() - ref).abs().max() < 1e-5
    assert torch.equal(lse.isinf(), ref_lse.isinf())  # the same queries see nothing
    fin = ref_lse.isfinite()
    assert (lse.double()[fin] - ref_lse[fin]).abs().max() < 1e-5
    if any(nq > nk for nq, nk in zip(lens_q, lens_k)):
        assert lse.isinf().any()  # the empty-row case really happened


def test_cpu_flash_bfloat16_and_backend_choice():
    from lengthwise import LengthwiseError
    from lengthwise.attention import Backend
    pick_backend = Backend.resolve
    q, k, v, meta, where = _case([7, 33], [7, 33], seed=3)
    out = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), meta, MaskPattern(causal=True), "cpu_flash")
    ref = dense_reference(q, k, v, *where, MaskPattern(causal=True))
    assert out.dtype == torch.bfloat16 and (out.double() - ref).abs().max() < 3e-2
    assert pick_backend("auto", torch.device("cpu"), torch.float32).kernel == "cpu_flash"
    assert pick_backend(None, torch.device("cpu"), torch.float64).kernel == "reference"  # float64: the exact twin
    with pytest.raises(LengthwiseError, match="cpu_flash backend needs the CPU"):
        pick_backend("cpu_flash", torch.device("cpu"), torch.float64)


@pytest.mark.parametrize("backend", ["reference", "cpu_flash"])
@pytest.mark.parametrize("splits", [2, 3, 8])
def test_split_kv_decode_equals_one_pass(backend, splits):
    """Keys cut into chunks and merged by log-sum-exp give the one-pass result; sequences shorter than the
    number of chunks, and one with no key at all, included."""
    used = [1, 2, 37, 0, 300, 5]
    cap = [n + 3 for n in used]  # regions with unused slots after the keys
    g = torch.Generator().manual_seed(splits)
    dt = torch.float64 if backend == "reference" else torch.float32
    H, Hkv, D = 4, 2, 8
    k = torch.randn(sum(cap), Hkv, D, generator=g, dtype=torch.float64).to(dt)
    v = torch.randn(sum(cap), Hkv, D, generator=g, dtype=torch.float64).to(dt)
    q = torch.randn(len(used), H, D, generator=g, dtype=torch.float64).to(dt)
    cu_k = torch.tensor([0] + torch.tensor(cap).cumsum(0).tolist(), dtype=torch.int32)
    meta = AttnMeta(torch.arange(len(used) + 1, dtype=torch.int32), 1, cu_k, max(cap),
                    torch.tensor(used, dtype=torch.int32))
    one, lse1 = attend(q, k, v, meta, MaskPattern(causal=True), backend, return_lse=True, splits=1)
    got, lse2 = attend(q, k, v, meta, MaskPattern(causal=True), backend, return_lse=True, splits=splits)
    tol = 1e-12 if dt == torch.float64 else 1e-5
    assert (got.double() - one.double()).abs().max() < tol
    assert torch.equal(lse1.isinf(), lse2.isinf()) and lse1[3].isinf().all() and (got[3] == 0).all()
    fin = lse1.isfinite()
    assert (lse1.double()[fin] - lse2.double()[fin]).abs().max() < tol


def test_split_kv_policy():
    from lengthwise import LengthwiseError
    from lengthwise.attention import split_kv
    q1, q64 = torch.zeros(1, 9, 64), torch.zeros(64, 9, 64)
    one = lambda max_k: AttnMeta(torch.arange(2, dtype=torch.int32), 1, torch.tensor([0, max_k]), max_k)
    from lengthwise.attention import Backend
    off, on = Backend("varlen", split_kv=False), Backend("varlen", split_kv=True)  # LENGTHWISE_SPLIT_KV=0 / 1
    assert split_kv.auto_splits(q1, one(131072), MaskPattern(causal=True), off) == 1
    assert split_kv.auto_splits(q1, one(131072), MaskPattern(causal=True), on) == 16  # 9 blocks -> 144
    assert split_kv.auto_splits(q1, one(4096), MaskPattern(causal=True), on) == 2  # chunks >= 2048 keys
    assert split_kv.auto_splits(q1, one(1024), MaskPattern(causal=True), on) == 1
    assert split_kv.auto_splits(q1, one(131072), MaskPattern(causal=True, window=64), on) == 1
    assert split_kv.auto_splits(q1, one(131072), MaskPattern(causal=True), "reference") == 1
    # a step where one of two sequences gets no new token: max_q is 1 but it is no decode step (no split)
    skip = AttnMeta(torch.tensor([0, 1, 1], dtype=torch.int32), 1, torch.tensor([0, 131072, 262144]), 131072)
    assert split_kv.auto_splits(q1, skip, MaskPattern(causal=True), on) == 1
    meta64 = AttnMeta(torch.arange(65, dtype=torch.int32), 1, torch.arange(65) * 8192, 8192)
    assert split_kv.auto_splits(q64, meta64, MaskPattern(causal=True), on) == 1  # 576 blocks already
    prefill = AttnMeta(torch.tensor([0, 5], dtype=torch.int32), 5, torch.tensor([0, 5]), 5)
    with pytest.raises(LengthwiseError, match="decode steps only"):
        attend(torch.zeros(5, 4, 8), torch.zeros(5, 2, 8), torch.zeros(5, 2, 8), prefill, MaskPattern(), splits=2)
