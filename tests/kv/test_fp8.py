"""The FP8 KV cache (kv_dtype="fp8") against independent references.

- The quantizer against a float64 hand computation: the scale is amax / 448 per (token, kv head), rounded to
  bfloat16; e4m3's rounding is written out here (3 mantissa bits, subnormals below 2^-6, 448 the largest) and
  checked against torch's own cast first.
- A whole model: HF transformers' LlamaForCausalLM with its keys and values passed through that hand quantizer
  inside its own eager attention gives the logits the fp8 cache must give, prefill and decode; against HF's plain
  float32 logits the fp8 cache stays within a stated bound; its storage is (D + 2) / 2D of a bf16 cache's.
- With an evicting policy (SnapKV, H2O) every kept token's bytes and scale are those the token was written with,
  after compaction and after shrink; packed equals per sequence.
"""
import json

import pytest
import torch

import lengthwise as lw
from lengthwise.attention.layer import Step
from lengthwise.generate import decode_need, decode_step, new_cache, prefill
from lengthwise.kv.cache import FP8, dequantize, quantize

from conftest import rel_err, tiny_hf_causal

LAYERS, H, HKV, D = 2, 4, 2, 64  # head_dim 64, as SmolLM2's: the scale's share of the bytes is a real model's
BF16_TINY = torch.finfo(torch.bfloat16).tiny


def e4m3(y: torch.Tensor) -> torch.Tensor:
    """float64 y, |y| <= 448 -> y rounded to the nearest float8 e4m3 (ties to even), as float64."""
    a = y.abs()
    e = torch.floor(torch.log2(a.clamp(min=2.0**-30))).clamp(min=-6)  # below 2^-6: subnormal, step 2^-9
    step = 2.0 ** (e - 3)
    return torch.sign(y) * (torch.round(a / step) * step).clamp(max=448)


def ref_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [..., D] -> (stored values [..., D] float64, scale [...] float64, dequantized [..., D] float64)."""
    x = x.double()
    scale = (x.abs().amax(-1) / 448).clamp(min=BF16_TINY).to(torch.bfloat16).double()
    y = e4m3((x / scale[..., None]).clamp(-448, 448))
    return y, scale, y * scale[..., None]


def test_hand_e4m3_is_torchs_cast():
    """The hand rounding above agrees with torch's float8_e4m3fn cast on every float8 value, every midpoint
    between neighbours (ties to even) and random values across the whole range."""
    every = torch.arange(256, dtype=torch.uint8).view(FP8).double()
    every = every[every.isfinite()].unique()  # 0x7f / 0xff are NaN in e4m3fn
    mids = (every[1:] + every[:-1]) / 2
    g = torch.Generator().manual_seed(0)
    rand = (torch.rand(20000, generator=g, dtype=torch.float64) * 2 - 1) * 2.0 ** torch.randint(-12, 9, (20000,), generator=g)
    y = torch.cat([every, mids, rand]).clamp(-448, 448)
    assert torch.equal(e4m3(y), y.to(FP8).double())
    assert every.abs().max() == 448 and every[every > 0].min() == 2.0**-9


def test_quantize_roundtrip_matches_float64_hand_computation():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, HKV, D, generator=g, dtype=torch.float64)
    x *= 10.0 ** torch.empty(300, HKV, 1, dtype=torch.float64).uniform_(-4, 4, generator=g)  # magnitudes per vector
    x[5, 0, 7] *= 1000  # a decode-time outlier: it sets its own vector's scale, nobody else's
    x[6, 1] = 0  # an all-zero vector: scale clamped, no 0 / 0
    x[7, 0] *= 1e-38  # below bfloat16's smallest normal / 448
    # a vector whose amax / 448 rounds down in bfloat16, so its largest element saturates at 448
    x[8, 0] = x[8, 0] / x[8, 0].abs().max() * 448 * (1 + 0.4 * 2**-7)
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        q, scale = quantize(x.to(dtype))
        assert q.dtype == FP8 and scale.dtype == torch.bfloat16 and scale.shape == x.shape[:-1]
        want_q, want_s, want = ref_fp8(x.to(dtype))
        assert torch.equal(scale.double(), want_s), dtype
        assert torch.equal(q.double(), want_q), dtype
        assert torch.equal(dequantize(q, scale, torch.float64), want), dtype
    q, scale = quantize(x)
    back = dequantize(q, scale, torch.float64)
    assert back.isfinite().all() and (back[6, 1] == 0).all()
    assert q[8, 0].double().abs().max() == 448 and x[8, 0].abs().max() / scale[8, 0].double() > 448  # saturated
    # e4m3 keeps 3 mantissa bits: within half a step of x, 2^-4 of |x| (normals) or 2^-10 of the scale (subnormals)
    err = (back - x).abs()
    bound = torch.maximum(x.abs() * 2.0**-4, scale.double()[..., None] * 2.0**-10) * (1 + 2**-7)  # saturation
    assert (err <= bound).all()  # the outlier's neighbours (x[5, 1], x[4, 0]) too: a scale is one vector's


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    hf, folder = tiny_hf_causal("llama", tmp_path_factory.mktemp("fp8"), num_hidden_layers=LAYERS, hidden_size=256,
                                num_attention_heads=H, num_key_value_heads=HKV)
    return hf, folder


def prompts_of(seed: int, lens):
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(211, generator=g)[:n].tolist() for n in lens]


def hf_logits(hf, ids, fake_quant: bool) -> torch.Tensor:
    """HF's own model on ids -> logits [n, V] float64; fake_quant: its post-RoPE keys and values pass through
    the hand quantizer (ref_fp8) before its eager attention, as an fp8 cache would hold them."""
    from transformers import AttentionInterface
    from transformers.models.llama.modeling_llama import eager_attention_forward

    n = len(ids)
    causal = torch.full((n, n), -torch.inf).triu(1)[None, None]  # a registered name gets no mask of HF's own

    def quantized(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        k, v = (ref_fp8(t)[2].to(t.dtype) for t in (key, value))  # [1, Hkv, n, D]: per token and kv head
        return eager_attention_forward(module, query, k, v, causal, scaling, dropout, **kw)

    before = hf.config._attn_implementation
    if fake_quant:
        AttentionInterface.register("lengthwise_test_fp8", quantized)
        hf.set_attn_implementation("lengthwise_test_fp8")
    try:
        with torch.no_grad():
            return hf(torch.tensor([ids])).logits[0].double()
    finally:
        hf.set_attn_implementation(before)


def run_steps(lm, prompts, feed, kv_dtype, plan="eager", chunk=4096):
    """Prefill, then forced decode tokens feed[i] per prompt -> ([B, V] logits per step, the cache)."""
    m = lm.module
    cache = new_cache(m, prompts, len(feed[0]) + 1, lm.kv, chunk, kv_dtype=kv_dtype)
    steps = []
    with torch.inference_mode():
        steps.append(prefill(m, prompts, cache, lm.backend, lm.kv, chunk))
        if lm.kv.evicts:
            cache.shrink(decode_need(lm.kv, cache, [len(p) for p in prompts], len(feed[0]) + 1))
        B = len(prompts)
        for t in range(len(feed[0])):
            tok = torch.tensor([f[t] for f in feed])
            if plan == "eager":
                steps.append(decode_step(m, cache, tok, torch.arange(B), lm.backend, lm.kv))
            else:  # as the CUDA graph plans it: no host sync
                slots, positions, meta = cache.plan_decode_all()
                steps.append(m(tok, positions, Step(meta, m.mask, lm.backend, cache, slots)))
    return steps, cache


# fp8 cache vs HF's float32 logits, max |diff| / max |ref| over every step (measured here: 0.027; a bf16 cache: 0.001)
FP8_BOUND = 0.05


@pytest.mark.parametrize("plan", ["eager", "graph"])
def test_fp8_logits_equal_hf_with_fake_quantized_kv_and_stay_near_hf_float32(models, plan):
    hf, folder = models
    lm = lw.load(folder, device="cpu", dtype="float32", backend="reference")
    prompts = prompts_of(0, (37, 12, 25))
    feed = [[5, 17, 3, 9], [11, 2, 40, 8], [7, 1, 99, 6]]
    fp8, cache = run_steps(lm, prompts, feed, "fp8", plan)
    assert cache.k.dtype == FP8 and cache.k_scale.dtype == torch.bfloat16
    exact, _ = run_steps(lm, prompts, feed, "auto", plan)
    worst = 0.0
    for i, p in enumerate(prompts):
        ids = p + feed[i]
        ref_q, ref = hf_logits(hf, ids, True), hf_logits(hf, ids, False)
        for t in range(len(fp8)):
            row = len(p) - 1 + t
            assert rel_err(exact[t][i], ref[row]) <= 1e-5  # the float32 cache is HF, so the gap below is fp8's
            assert rel_err(fp8[t][i], ref_q[row]) <= 1e-4, (i, t)  # fp8 is exactly the per-(token, head) quantizer
            worst = max(worst, rel_err(fp8[t][i], ref[row]))
    assert 1e-4 < worst <= FP8_BOUND, worst


def storage(cache) -> int:
    """Every byte the cache object's tensors hold, found by walking its attributes (not by nbytes' own list)."""
    seen, total = set(), 0
    for v in vars(cache).values():
        for t in (v if isinstance(v, list) else [v]):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
    return total


@pytest.mark.parametrize("spec", [None, "snapkv:ratio=0.5,window=4"])
def test_fp8_cache_holds_about_half_of_bf16s_bytes(models, spec):
    _, folder = models
    lm = lw.load(folder, device="cpu", kv=spec)
    prompts = [[1] * 300, [2] * 180, [3] * 40]
    got = {}
    for kv_dtype in ("bf16", "fp8"):
        cache = new_cache(lm.module, prompts, 16, lm.kv, chunk=64, kv_dtype=kv_dtype)
        assert 0 <= storage(cache) - cache.nbytes <= 2048  # nbytes misses nothing but the [B] bookkeeping
        assert sum(cache.region_bytes()) == pytest.approx(cache.nbytes, abs=len(prompts))
        got[kv_dtype] = cache.nbytes
    extra = 0 if spec is None else 4  # an evicting cache's int32 position per (slot, kv head)
    assert got["fp8"] / got["bf16"] == pytest.approx((2 * (D + 2) + extra) / (2 * 2 * D + extra))  # 0.516, 0.523
    assert got["fp8"] / got["bf16"] < 0.53


def kept(cache, layer, i):
    """{(position, kv head): (stored e4m3 bytes [D] of k and v, their scales)} of sequence i in one layer."""
    a, n = int(cache.start_l[layer, i]), int(cache.kept[layer, i])
    out = {}
    for s in range(a, a + n):
        for h in range(HKV):
            out[int(cache.pos[layer][s, h]), h] = (cache.k[layer][s, h].view(torch.uint8).tolist(),
                                                   cache.v[layer][s, h].view(torch.uint8).tolist(),
                                                   float(cache.k_scale[layer][s, h]), float(cache.v_scale[layer][s, h]))
    return out


@pytest.mark.parametrize("spec", ["snapkv:ratio=0.5,window=4", "h2o:ratio=0.5"])
def test_compaction_and_shrink_move_scales_with_their_tokens(models, spec):
    """One prefill forward: every token is written before any is dropped, so each token a policy keeps must hold,
    after compaction and after shrink, exactly the bytes and scales a cache that keeps everything holds for it."""
    _, folder = models
    lm = lw.load(folder, device="cpu", dtype="float64", backend="reference", kv=spec)
    full = lw.load(folder, device="cpu", dtype="float64", backend="reference")
    prompts = prompts_of(1, (41, 9, 30))
    _, ref = run_steps(full, prompts, [[1]] * 3, "fp8")
    for step in ("prefill", "shrink"):
        cache = new_cache(lm.module, prompts, 2, lm.kv, kv_dtype="fp8")
        with torch.inference_mode():
            prefill(lm.module, prompts, cache, lm.backend, lm.kv)
            if step == "shrink":
                cache.shrink(decode_need(lm.kv, cache, [len(p) for p in prompts], 2))
        assert cache.kept[0, 0] < len(prompts[0])  # the policy did drop tokens
        for layer in range(LAYERS):
            for i, p in enumerate(prompts):
                got = kept(cache, layer, i)
                a = int(ref.start[i])
                for (pos, h), (k8, v8, ks, vs) in got.items():
                    s = a + pos
                    assert k8 == ref.k[layer, s, h].view(torch.uint8).tolist(), (spec, step, layer, i, pos, h)
                    assert v8 == ref.v[layer, s, h].view(torch.uint8).tolist()
                    assert (ks, vs) == (float(ref.k_scale[layer, s, h]), float(ref.v_scale[layer, s, h]))


@pytest.mark.parametrize("spec", ["snapkv:ratio=0.5,window=4", "h2o:ratio=0.6"])
def test_fp8_with_a_policy_packed_equals_per_sequence(models, spec):
    """Chunked prefill (each chunk attends to the fp8 tokens kept of the earlier ones, then evicts), then decode."""
    _, folder = models
    lm = lw.load(folder, device="cpu", dtype="float64", backend="reference", kv=spec, kv_dtype="fp8")
    prompts = prompts_of(3, (37, 4, 26, 15))
    feed = [[5, 6, 7]] * 4
    packed, both = run_steps(lm, prompts, feed, "fp8", chunk=8)
    for i, p in enumerate(prompts):
        alone_steps, alone = run_steps(lm, [p], feed[:1], "fp8", chunk=8)
        for t in range(len(packed)):
            assert rel_err(packed[t][i], alone_steps[t][0]) <= 1e-9, (spec, i, t)
        for layer in range(LAYERS):
            assert kept(both, layer, i) == kept(alone, layer, 0), (spec, i, layer)
    # the user's path: the same tokens packed or alone, and fp8 is really on
    got = lm.generate_ids(prompts, max_new_tokens=4)
    assert lm.generate_ids([prompts[2]], max_new_tokens=4)[0] == got[2]


def test_far_keys_are_stored_fp8_too(models):
    """A remap's far keys (SelfExtend with its own far rotation) go through the same write and read."""
    from lengthwise.kv import RaggedKVCache
    cache = RaggedKVCache(1, [6], HKV, D, torch.float32, "cpu", far_keys=True, kv_dtype="fp8")
    x = torch.randn(3, HKV, D)
    got = cache.write_far(0, torch.tensor([1, 2, 4]), x)
    assert cache.k_far.dtype == FP8 and got.dtype == torch.float32
    assert torch.equal(got[[1, 2, 4]].double(), ref_fp8(x)[2])
    assert cache.nbytes == 3 * 6 * HKV * (D + 2)  # keys, values, far keys, each with its scales


def test_bad_kv_dtype_is_one_line(models):
    _, folder = models
    for bad in ("fp16", "e4m3", "FP8"):
        with pytest.raises(lw.LengthwiseError, match=r"unknown kv_dtype .*auto.*bf16.*fp8"):
            lw.load(folder, device="cpu", kv_dtype=bad)
    with pytest.raises(lw.LengthwiseError, match="hf engine"):
        lw.evaluate(str(folder), ["passkey"], [64], "/nonexistent/x.jsonl", engine="hf", kv_dtype="fp8")


def test_cli_kv_dtype_on_generate_and_eval(tmp_path, smol_path):
    from typer.testing import CliRunner
    from lengthwise import cli
    from conftest import tiny_smol_llama
    folder = tmp_path / "tiny"
    tiny_smol_llama(folder, smol_path)
    src = tmp_path / "p.txt"
    src.write_text("The capital of France is\nOne, two, three,\n")
    r = CliRunner().invoke(cli.app, ["generate", str(src), "--model", str(folder), "--device", "cpu",
                                     "--max-new-tokens", "4", "--kv-dtype", "fp8", "--kv", "h2o:ratio=0.5"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    want = lw.load(folder, device="cpu", kv="h2o:ratio=0.5", kv_dtype="fp8").generate(
        ["The capital of France is", "One, two, three,"], max_new_tokens=4)
    assert [x["completion"] for x in lines] == want
    out = tmp_path / "e.jsonl"
    base = ["eval", "--model", str(folder), "--tasks", "niah_single", "--lengths", "600", "--depths", "1",
            "--samples", "1", "--device", "cpu", "-o", str(out)]
    r = CliRunner().invoke(cli.app, base + ["--kv-dtype", "fp8"])
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in out.read_text().splitlines() if '"score"' in x]
    assert [(x["kv_dtype"], x["config"]["kv_dtype"]) for x in recs] == [("fp8", "fp8")]
    r = CliRunner().invoke(cli.app, base)  # auto: another config, refused without --append-config
    assert r.exit_code == 2 and "append-config" in r.output, r.output
    r = CliRunner().invoke(cli.app, base + ["--append-config"])
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in out.read_text().splitlines() if '"score"' in x]
    assert [x["kv_dtype"] for x in recs] == ["fp8", "auto"] and recs[0]["kv_bytes"] < 0.6 * recs[1]["kv_bytes"]
    rows = json.dumps(lw.report([out]), default=str)
    assert "kv_dtype=fp8" in rows and "kv_dtype=auto" in rows
    for args in (["generate", str(src), "--model", "smollm2-135m", "--kv-dtype", "int4"],
                 ["eval", "--model", "smollm2-135m", "-o", str(tmp_path / "o.jsonl"), "--kv-dtype", "fp16"]):
        r = CliRunner().invoke(cli.app, args)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert "unknown kv_dtype" in r.output and "Traceback" not in r.output
