"""The one-pass two-region decode kernel (run by Triton's interpreter on the CPU) against attend_two_region on the
float64 reference backend, and inside the model against the two-pass step."""
import os

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":  # tests/conftest.py sets it on a machine without CUDA
    pytest.skip("the kernel runs on CPU tensors under TRITON_INTERPRET=1 only", allow_module_level=True)

import lengthwise as lw
from lengthwise.attention import AttnMeta, Backend, MaskPattern, remap_decode_applies
from lengthwise.attention.triton_two_region import auto_splits, two_region_decode
from lengthwise.attention.two_region import attend_two_region
from lengthwise.positions.rope import Far
from conftest import rel_err, tiny_hf_causal


def used_around(W):
    """Key counts around the region boundary (far_end = used - W): no far key (below W, at W), one far key, the
    boundary on a block edge (64 + W) and inside blocks, several blocks of each region."""
    return [1, max(W - 1, 1), W, W + 1, 64 + W, 65 + W, 129 + W, 300]


def ragged(used, H, Hkv, D, same_k, g, gap=5, dtype=torch.float32):
    """q, qf [B, H, D]; k, v, kf [S, Hkv, D] (kf is k when same_k) with each region `gap` rows past its keys,
    those rows NaN; and the decode step's AttnMeta."""
    cap = [n + gap for n in used]
    cu_k = torch.tensor([0] + torch.tensor(cap).cumsum(0).tolist(), dtype=torch.int32)
    k, v, kf = (torch.randn(sum(cap), Hkv, D, generator=g).to(dtype) for _ in range(3))
    kf = k if same_k else kf
    for i, n in enumerate(used):
        for t in (k, v, kf):
            t[cu_k[i] + n:cu_k[i + 1]] = float("nan")
    q, qf = (torch.randn(len(used), H, D, generator=g).to(dtype) for _ in range(2))
    meta = AttnMeta(torch.arange(len(used) + 1, dtype=torch.int32), 1, cu_k, max(cap),
                    torch.tensor(used, dtype=torch.int32))
    return q, qf, k, v, kf, meta


def reference(q, qf, k, v, kf, meta, W, scale):
    """attend_two_region in float64 on the reference backend: a near pass, a far pass and their merge."""
    far = Far(None, None, None, None, meta.used_k.long() - 1, W, None)  # the query sits at index used_k - 1
    return attend_two_region(q.double(), k.double(), v.double(), qf.double(), kf.double(), meta,
                             MaskPattern(causal=True), far, "reference", scale)


def check(W, H, Hkv, same_k, splits=None, D=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, qf, k, v, kf, meta = ragged(used_around(W), H, Hkv, D, same_k, g)
    scale = 0.7 * D ** -0.5
    out = two_region_decode(q, qf, k, v, kf, meta.cu_k, meta.used_k, W, scale, meta.max_k, splits=splits)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert not out.isnan().any()  # the NaN rows past each sequence's keys were never read
    assert rel_err(out, reference(q, qf, k, v, kf, meta, W, scale)) < 1e-5


@pytest.mark.parametrize("same_k", [False, True], ids=["kf apart", "kf is k"])
@pytest.mark.parametrize("H,Hkv", [(9, 3), (4, 4)])
def test_one_pass_matches_two_pass_reference(H, Hkv, same_k):
    check(37, H, Hkv, same_k)


@pytest.mark.parametrize("W,splits", [(1, 3), (64, 8), (150, 2)])  # 8 splits: some hold no key
def test_splits_merge_exactly(W, splits):
    """Every key but the newest far (W=1), a block-sized window, a wide one; each sequence's keys in splits."""
    check(W, 9, 3, same_k=False, splits=splits, seed=W)


def test_float16_odd_head_dim_and_strided_queries():
    """fp16 inputs (the interpreter's tl.dot is wrong in bf16: benchmarks/gpu_check.py checks it), D padded to a
    power of two inside the kernel, q and qf views whose head stride is not D."""
    g = torch.Generator().manual_seed(5)
    used, W, H, Hkv, D = [3, 70, 129, 40], 20, 6, 2, 80
    _, _, k, v, kf, meta = ragged(used, H, Hkv, D, False, g, dtype=torch.float16)
    q, qf = (torch.randn(len(used), H, 2 * D, generator=g).half()[..., :D] for _ in range(2))
    out = two_region_decode(q, qf, k, v, kf, meta.cu_k, meta.used_k, W, D ** -0.5, splits=2)
    assert out.dtype == torch.float16
    assert rel_err(out, reference(q, qf, k, v, kf, meta, W, D ** -0.5)) < 2e-3


def test_auto_splits():
    """About four programs per SM (132), at least 512 keys of the longest sequence per split, a power of two."""
    assert auto_splits(16, 3, 32768) == 8 and auto_splits(4, 3, 32768) == 32
    assert auto_splits(4, 3, 2048) == 4 and auto_splits(64, 3, 7000) == 2
    assert auto_splits(200, 3, 32768) == 1 and auto_splits(4, 3, 500) == 1


def test_routing(monkeypatch):
    q = torch.zeros(4, 9, 64)
    decode = AttnMeta(torch.arange(5, dtype=torch.int32), 1, torch.arange(5, dtype=torch.int32) * 8, 8,
                      torch.full((4,), 5, dtype=torch.int32))
    causal, on = MaskPattern(causal=True), Backend("varlen")
    assert on.one_pass_remap and remap_decode_applies(q, decode, causal, on)
    assert not remap_decode_applies(q, decode, causal, Backend("varlen", one_pass_remap=False))
    assert not remap_decode_applies(q, decode, causal, Backend("reference"))
    assert not remap_decode_applies(q, AttnMeta(decode.cu_q, 1, decode.cu_k, 8), causal, on)  # no cache
    prefill = AttnMeta(torch.tensor([0, 3, 4], dtype=torch.int32), 3, torch.tensor([0, 3, 4], dtype=torch.int32), 3)
    assert not remap_decode_applies(q, prefill, causal, on)
    monkeypatch.setenv("LENGTHWISE_ONE_PASS_REMAP", "0")
    assert not Backend.from_env("varlen").one_pass_remap


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    _, f = tiny_hf_causal("llama", tmp_path_factory.mktemp("one_pass"), max_position_embeddings=32)
    return f


def decode_logits(lm, prompts, steps):
    """Prefill the prompts into a ragged cache (NaN in every slot not yet written), then `steps` decode steps of
    token 1 -> logits [steps + 1, B, V]."""
    from lengthwise import RaggedBatch
    from lengthwise.kv import RaggedKVCache
    from lengthwise.models.llama import Step
    m, cfg = lm.module, lm.config
    cache = RaggedKVCache(cfg.n_layers, [len(p) + steps for p in prompts], cfg.n_kv_heads, cfg.head_dim,
                          torch.float32, "cpu", far_keys=m.rotary.far_keys)
    for pool in (cache.k, cache.v, cache.k_far):
        if pool is not None:
            pool.fill_(float("nan"))
    batch = RaggedBatch.from_lists(prompts, "cpu")
    out = []
    with torch.inference_mode():
        slots, positions, meta = cache.plan(torch.arange(len(prompts)), batch.cu_seqlens.diff().long())
        out.append(m(batch.tokens, positions, Step(meta, m.mask, lm.backend, cache, slots), out_rows=batch.last_index))
        for _ in range(steps):
            slots, positions, meta = cache.plan_decode_all()
            out.append(m(torch.ones(len(prompts), dtype=torch.long), positions,
                         Step(meta, m.mask, lm.backend, cache, slots)))
    return torch.stack(out)


@pytest.mark.parametrize("spec,one_pass", [("self_extend:group=4,window=8", True), ("distance_cap:cap=6", True),
                                           ("string:shift=10,local=3", True), ("sinks:sinks=2,window=9", False)])
def test_the_model_decode_step_takes_one_pass(folder, monkeypatch, spec, one_pass):
    """attention_step's remap branch: a decode step runs the one-pass kernel (the GPU condition, forced here on the
    reference backend) with the same logits as the two-pass step; LM-Infinite's sinks keep their own pass."""
    from lengthwise.attention import layer, triton_two_region
    lm = lw.load(folder, device="cpu", dtype="float32", positions=spec, backend="reference")
    calls = []

    def counted(*a, **kw):
        calls.append(a[0].shape[0])
        return two_region_decode(*a, **kw)
    monkeypatch.setattr(triton_two_region, "two_region_decode", counted)
    prompts = [[5, 9, 2] * 7, [4, 4, 7], list(range(10, 21))]  # 21, 3 and 11 tokens: past the near window and not
    monkeypatch.setattr(layer, "remap_decode_applies", lambda q, meta, mask, backend: meta.max_q == 1)
    got = decode_logits(lm, prompts, 3)
    assert calls == ([3] * 2 * 3 if one_pass else [])  # every layer of every decode step
    monkeypatch.setattr(layer, "remap_decode_applies", lambda *a: False)
    want = decode_logits(lm, prompts, 3)
    assert rel_err(got, want) < 1e-5
