"""RoPE scalings against HF transformers' own rope init functions, and end to end against HF models."""
import math

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import lengthwise as lw
from lengthwise.positions import (NTK, DynamicNTK, Giraffe, Linear, Rotary, SelfExtend, YaRN, from_hf,
                                  parse, to_hf)
from conftest import rel_err, tiny_hf_causal

HEAD_DIM, BASE, TRAINED = 64, 10000.0, 8192


def _hf(rope: dict, head_dim=HEAD_DIM, base=BASE, trained=TRAINED):
    return transformers.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, max_position_embeddings=trained,
                                    rope_parameters={"rope_theta": base, **rope})


def _ours(scheme, head_dim=HEAD_DIM, base=BASE, trained=TRAINED):
    r = Rotary(scheme, head_dim, base, trained)
    return r._inv_cpu, r.factor


@pytest.mark.parametrize("factor", [2.0, 4.0, 16.0])
def test_linear_matches_hf(factor):
    inv, att = ROPE_INIT_FUNCTIONS["linear"](_hf({"rope_type": "linear", "factor": factor}))
    ours, f = _ours(Linear(factor))
    assert torch.equal(ours, inv) and f == att == 1.0


@pytest.mark.parametrize("factor,beta_fast,beta_slow,truncate,head_dim,base,original", [
    (4.0, 32, 1, True, 64, 10000.0, 0),
    (8.0, 32, 1, True, 64, 100000.0, 0),  # SmolLM2's base
    (16.0, 16, 2, False, 128, 500000.0, 4096),
    (1.0, 32, 1, True, 64, 10000.0, 0),  # factor 1: no temperature
])
def test_yarn_matches_hf(factor, beta_fast, beta_slow, truncate, head_dim, base, original):
    rope = {"rope_type": "yarn", "factor": factor, "beta_fast": beta_fast, "beta_slow": beta_slow, "truncate": truncate}
    if original:
        rope["original_max_position_embeddings"] = original
    inv, att = ROPE_INIT_FUNCTIONS["yarn"](_hf(rope, head_dim, base))
    ours, f = _ours(YaRN(factor, beta_fast, beta_slow, 0.0, original, truncate), head_dim, base)
    assert torch.allclose(ours, inv, rtol=1e-6, atol=0), (ours - inv).abs().max()
    assert f == pytest.approx(att, rel=1e-12)
    # the paper's temperature: sqrt(1/t) = 0.1 ln(s) + 1, applied to cos and sin
    assert f == pytest.approx(1.0 if factor <= 1 else 0.1 * math.log(factor) + 1)


@pytest.mark.parametrize("factor,attn_factor,original,truncate,base", [
    (8.0, 0.0, 0, True, 100000.0),  # SmolLM2's base
    (16.0, 1.3, 4096, False, 10000.0),
])
def test_dynamic_yarn_matches_hf_yarn_at_each_length(factor, attn_factor, original, truncate, base):
    """Each length L uses HF's static yarn at s = clamp(L / original, 1, factor); s == 1 is plain RoPE, exactly."""
    orig = original or TRAINED
    lens = [100, orig - 1, orig, orig + 1, int(2.5 * orig), int(orig * factor), int(orig * factor) + 1, 20 * orig]
    y = YaRN(factor, attn_factor=attn_factor, original=original, truncate=truncate, dynamic=True)
    seq_len = torch.tensor(lens)
    inv_at = y.inv_freq_at(seq_len, HEAD_DIM, base, TRAINED)  # [N, D/2], every length in one call
    att_at = y.attention_factor_at(seq_len, TRAINED)  # [N]
    default = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding.compute_default_rope_parameters
    plain, _ = default(_hf({"rope_type": "default"}, base=base))  # HF's own init for no scaling
    for L, ours, f in zip(lens, inv_at, att_at.tolist()):
        s = min(factor, max(1.0, L / orig))
        if s == 1:
            assert torch.equal(ours, plain) and f == 1.0, L
            continue
        rope = {"rope_type": "yarn", "factor": s, "truncate": truncate, "original_max_position_embeddings": orig}
        inv, att = ROPE_INIT_FUNCTIONS["yarn"](_hf(rope | ({"attention_factor": attn_factor} if attn_factor else {}),
                                                   base=base))
        assert torch.allclose(ours, inv, rtol=1e-6, atol=0), (L, (ours - inv).abs().max())
        assert f == pytest.approx(att, rel=1e-12), L
        # and exactly our static yarn at that factor
        static = YaRN(s, attn_factor=attn_factor, original=original, truncate=truncate)
        assert torch.equal(ours, static.inv_freq(HEAD_DIM, base, TRAINED)), L
        assert f == pytest.approx(static.attention_factor(TRAINED), rel=1e-15), L


def test_dynamic_yarn_spec_and_hf_refusal():
    y = parse("yarn:factor=16,dynamic=true")
    assert y == YaRN(16.0, dynamic=True) and y.per_length() and not YaRN(16.0).per_length()
    assert y.spec() == "yarn:factor=16,dynamic=true" and parse(y.spec()) == y
    assert y.reach(TRAINED) == 16 * TRAINED
    with pytest.raises(lw.LengthwiseError, match=r"^yarn: dynamic='maybe' is not true or false$"):
        parse("yarn:dynamic=maybe")
    with pytest.raises(lw.LengthwiseError, match="the hf backend has no dynamic YaRN") as e:
        to_hf(y, TRAINED)
    assert "\n" not in str(e.value)
    assert to_hf(YaRN(16.0), TRAINED)["factor"] == 16.0  # static yarn still goes to HF
    with pytest.raises(lw.LengthwiseError, match="dynamic RoPE scaling"):  # a remap keeps no moving frequencies
        Rotary(SelfExtend(group=4, window=8), HEAD_DIM, BASE, TRAINED, native=y)


def test_yarn_from_hf_config_uses_mscale():
    rope = {"rope_type": "yarn", "factor": 4.0, "mscale": 1.0, "mscale_all_dim": 0.5}
    _, att = ROPE_INIT_FUNCTIONS["yarn"](_hf(rope))
    assert _ours(from_hf(rope, HEAD_DIM))[1] == pytest.approx(att, rel=1e-12)


@pytest.mark.parametrize("seq_len", [100, 8192, 8193, 20000, 131072])
def test_dynamic_ntk_matches_hf_at_each_length(seq_len):
    cfg = _hf({"rope_type": "dynamic", "factor": 4.0})
    inv, _ = ROPE_INIT_FUNCTIONS["dynamic"](cfg, seq_len=seq_len)
    ours = DynamicNTK(4.0).inv_freq_at(torch.tensor([seq_len]), HEAD_DIM, BASE, TRAINED)[0]
    assert torch.allclose(ours, inv, rtol=1e-6, atol=0)


def test_dynamic_ntk_within_the_trained_length_is_plain_ropes_own_table(monkeypatch):
    """Within the trained length the frequencies are the plain table itself (built on the CPU), not the formula at
    scale 1, which a GPU can round differently; a sentinel table shows which one is read."""
    import lengthwise.positions.dynamic_ntk as dn
    plain = NTK(1.0).inv_freq(HEAD_DIM, BASE, TRAINED)
    lens = torch.tensor([1, 100, TRAINED, TRAINED + 1])
    got = DynamicNTK(4.0).inv_freq_at(lens, HEAD_DIM, BASE, TRAINED)
    assert all(torch.equal(g, plain) for g in got[:3])
    assert not torch.allclose(got[3], plain, rtol=1e-9, atol=0)  # one token past it, the base grows
    monkeypatch.setattr(dn, "plain_table", lambda *a: torch.full((HEAD_DIM // 2,), 7.0))
    got = DynamicNTK(4.0).inv_freq_at(lens, HEAD_DIM, BASE, TRAINED)
    assert (got[:3] == 7.0).all() and not (got[3] == 7.0).any()


def test_static_ntk_is_dynamic_ntk_frozen_at_one_length():
    # dynamic NTK at length L uses alpha = s L / L0 - (s - 1); static NTK with that alpha is the same base
    cfg = _hf({"rope_type": "dynamic", "factor": 2.0})
    inv, _ = ROPE_INIT_FUNCTIONS["dynamic"](cfg, seq_len=4 * TRAINED)
    ours, f = _ours(NTK(2.0 * 4 - 1))
    assert torch.allclose(ours, inv, rtol=1e-6, atol=0) and f == 1.0
    # hand check: the highest frequency is untouched, the lowest is scaled by exactly 1/alpha
    plain = 1.0 / BASE ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM)
    assert ours[0] == plain[0]
    assert ours[-1].item() == pytest.approx(plain[-1].item() / 7.0 ** ((HEAD_DIM - 2) / (HEAD_DIM - 2)), rel=1e-5)


def test_longrope_matches_hf():
    long = [1.0 + 0.25 * i for i in range(HEAD_DIM // 2)]
    short = [1.0 + 0.01 * i for i in range(HEAD_DIM // 2)]
    rope = {"rope_type": "longrope", "long_factor": long, "short_factor": short, "original_max_position_embeddings": 4096}
    cfg = _hf(rope, trained=16384)
    inv_long, att = ROPE_INIT_FUNCTIONS["longrope"](cfg, seq_len=5000)
    inv_short, _ = ROPE_INIT_FUNCTIONS["longrope"](cfg, seq_len=100)
    scheme = from_hf(rope, HEAD_DIM, max_pos=16384)  # no factor given: HF derives 16384 / 4096, and so do we
    assert scheme.s == 4.0 and scheme.original == 4096
    both = scheme.inv_freq_at(torch.tensor([5000, 100]), HEAD_DIM, BASE, 16384)
    assert torch.equal(both[0], inv_long) and torch.equal(both[1], inv_short)
    assert Rotary(scheme, HEAD_DIM, BASE, 16384).factor == pytest.approx(att, rel=1e-12)


def test_llama3_matches_hf():
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    inv, _ = ROPE_INIT_FUNCTIONS["llama3"](_hf(rope, 128, 500000.0, 131072))
    ours, _ = _ours(from_hf(rope, 128), 128, 500000.0, 131072)
    assert torch.equal(ours, inv)


def test_giraffe_truncates_by_wavelength():
    T = 1024
    inv, _ = _ours(Giraffe(truncate=T), trained=T)
    plain = 1.0 / BASE ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM)
    wave = 2 * math.pi / plain
    for w, p, o in zip(wave.tolist(), plain.tolist(), inv.tolist()):
        if w <= T:
            assert o == p  # turns at least once in T tokens: kept
        elif w <= 8 * T:
            assert o == pytest.approx(2 * math.pi / (16 * T))  # wavelength set to 16 T
        else:
            assert o == 0.0  # never turns: no rotation
    assert (inv == 0).any() and (inv == plain).any()


# --- end to end: our model with a scheme against HF's model with the same rope_scaling -------------

@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 32},
])
def test_checkpoint_rope_scaling_matches_hf_past_the_trained_length(tmp_path, rope):
    """The config's max_position_embeddings (128) already counts the scaling; pretraining was 32 tokens."""
    hf, folder = tiny_hf_causal("llama", tmp_path, max_position_embeddings=128, rope_parameters={"rope_theta": 10000.0, **rope})
    lm = lw.load(folder, device="cpu", dtype="float32")
    assert lm.context_length == 128  # the checkpoint's own scaling claims nothing beyond its config
    assert lw.load(folder, device="cpu", positions="none").positions == lm.positions  # none: as trained
    assert lm.positions.name == {"linear": "linear", "yarn": "yarn", "llama3": "llama3"}[rope["rope_type"]]
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 211, (n,), generator=g).tolist() for n in (5, 90, 127)]
    with torch.no_grad():
        ref = [hf(torch.tensor([s])).logits[0] for s in seqs]
    for o, r in zip(lm.logits(seqs), ref):
        assert rel_err(o, r) <= 1e-4


@pytest.mark.parametrize("spec,hf_rope", [
    ("linear:factor=4", {"rope_type": "linear", "factor": 4.0}),
    ("yarn:factor=8", {"rope_type": "yarn", "factor": 8.0}),
])
def test_positions_option_matches_hf_rope_scaling(tmp_path, spec, hf_rope):
    _, folder = tiny_hf_causal("llama", tmp_path, max_position_embeddings=32)
    hf, _ = tiny_hf_causal("llama", tmp_path / "hf", max_position_embeddings=32,
                           rope_parameters={"rope_theta": 10000.0, **hf_rope})
    lm = lw.load(folder, device="cpu", dtype="float32", positions=spec)
    s = torch.randint(0, 211, (120,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([s])).logits[0]
    assert rel_err(lm.logits([s])[0], ref) <= 1e-4


def test_dynamic_ntk_packed_sequences_each_use_their_own_length(tmp_path):
    """HF scales a batch by its longest input; lengthwise by each sequence's own length, as HF does one at a time."""
    hf, folder = tiny_hf_causal("llama", tmp_path, max_position_embeddings=32,
                                rope_parameters={"rope_theta": 10000.0, "rope_type": "dynamic", "factor": 2.0})
    assert isinstance(lw.load(folder, device="cpu").positions, DynamicNTK)  # read from the config
    assert lw.load(folder, device="cpu").context_length == 32  # the checkpoint's own scaling claims nothing more
    lm = lw.load(folder, device="cpu", dtype="float32", positions="dynamic_ntk:factor=2")  # asked for: reaches past
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, 211, (n,), generator=g).tolist() for n in (20, 150, 64, 33)]
    packed = lm.logits(seqs)
    for s, o in zip(seqs, packed):
        hf.model.rotary_emb.max_seq_len_cached = 32  # one fresh sequence at a time
        hf.model.rotary_emb.inv_freq = hf.model.rotary_emb.original_inv_freq
        with torch.no_grad():
            ref = hf(torch.tensor([s])).logits[0]
        assert rel_err(o, ref) <= 1e-4, len(s)


def test_dynamic_ntk_generation_matches_hf(tmp_path):
    """Decode past the trained length: each step rescales new tokens, cached keys keep their rotation."""
    hf, folder = tiny_hf_causal("llama", tmp_path, max_position_embeddings=32,
                                rope_parameters={"rope_theta": 10000.0, "rope_type": "dynamic", "factor": 2.0})
    lm = lw.load(folder, device="cpu", dtype="float32", positions="dynamic_ntk:factor=2")
    prompts = [torch.randint(3, 211, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (24, 40)]
    ours = lm.generate_ids(prompts, max_new_tokens=20)
    for p, o in zip(prompts, ours):
        hf.model.rotary_emb.max_seq_len_cached = 32
        hf.model.rotary_emb.inv_freq = hf.model.rotary_emb.original_inv_freq
        ids = torch.tensor([p])
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
        assert o == ref


def _hf_rope_at(hf, rope: dict):
    """HF's model with its rotary embedding rebuilt for `rope` (the weights untouched)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    cfg = transformers.LlamaConfig(**{**hf.config.to_dict(), "rope_parameters": {"rope_theta": 10000.0, **rope}})
    hf.model.rotary_emb = LlamaRotaryEmbedding(cfg)
    return hf


def test_dynamic_yarn_packed_sequences_each_use_their_own_length(tmp_path):
    """Each sequence of a packed batch equals HF's static yarn at s = clamp(L / 32, 1, 8), run on it alone;
    within the trained length it is the plain model, bit for bit."""
    hf, folder = tiny_hf_causal("llama", tmp_path, max_position_embeddings=32)
    lm = lw.load(folder, device="cpu", dtype="float32", positions="yarn:factor=8,dynamic=true")
    plain = lw.load(folder, device="cpu", dtype="float32")
    assert lm.context_length == 256 and plain.context_length == 32
    g = torch.Generator().manual_seed(4)
    seqs = [torch.randint(0, 211, (n,), generator=g).tolist() for n in (20, 150, 32, 33, 256, 7, 90)]
    packed = lm.logits(seqs)
    for s, o in zip(seqs, packed):
        scale = min(8.0, max(1.0, len(s) / 32))
        rope = {"rope_type": "yarn", "factor": scale, "original_max_position_embeddings": 32} if scale > 1 else {}
        with torch.no_grad():
            ref = _hf_rope_at(hf, rope)(torch.tensor([s])).logits[0]
        assert rel_err(o, ref) <= 1e-4, len(s)
    short = [s for s in seqs if len(s) <= 32]
    for a, b in zip(lm.logits(short), plain.logits(short)):
        assert torch.equal(a, b)  # the plain model within the trained length, bit for bit
    within = {len(s): o for s, o in zip(seqs, packed) if len(s) <= 32}
    for s, b in zip(short, plain.logits(short)):
        assert rel_err(within[len(s)], b) <= 1e-6  # also inside a batch with longer sequences


def test_dynamic_yarn_generation(tmp_path):
    """Decode rescales each step by the sequence's new length: packed == one at a time, and a generation that
    stays within the trained length is the plain model's."""
    _, folder = tiny_hf_causal("llama", tmp_path, max_position_embeddings=32)
    lm = lw.load(folder, device="cpu", dtype="float32", positions="yarn:factor=8,dynamic=true")
    prompts = [torch.randint(3, 211, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (10, 28, 45)]
    batched = lm.generate_ids(prompts, max_new_tokens=12)
    assert batched == [lm.generate_ids([p], max_new_tokens=12)[0] for p in prompts]
    plain = lw.load(folder, device="cpu", dtype="float32")
    assert lm.generate_ids(prompts[:1], max_new_tokens=12) == plain.generate_ids(prompts[:1], max_new_tokens=12)


def test_reach_opens_the_context_and_still_bounds_it(tmp_path):
    _, folder = tiny_hf_causal("llama", tmp_path, max_position_embeddings=32)
    assert lw.load(folder, device="cpu").context_length == 32
    lm = lw.load(folder, device="cpu", positions="yarn:factor=4")
    assert lm.context_length == 128
    lm.logits([[1] * 128])
    with pytest.raises(lw.LengthwiseError, match="129"):
        lm.logits([[1] * 129])
    assert parse("self_extend:group=4,window=8").reach(32) == (32 - 8) * 4 + 8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_rotation_tables_equal_hf_style_rope_bit_for_bit(dtype):
    """Tables (cast once, sign folded into sin, roll instead of cat) give exactly apply_rope's values,
    which follow HF's rotate_half in x's dtype; queries and keys rotated together equal each alone."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    from lengthwise.positions import Tables, apply_rope
    g = torch.Generator().manual_seed(0)
    T, H, D = 37, 5, 64
    rot = Rotary(YaRN(factor=4.0), D, 10000.0, 64)(torch.arange(100, 100 + T))
    x = (torch.randn(T, H, D, generator=g, dtype=torch.float64) * 3).to(dtype)
    got = Tables.of(rot.cos, rot.sin, dtype).apply(x)
    assert torch.equal(got, apply_rope(x, rot.cos, rot.sin))
    hq, _ = apply_rotary_pos_emb(x.transpose(0, 1)[None], x.transpose(0, 1)[None], rot.cos[None].to(dtype),
                                 rot.sin[None].to(dtype))
    assert torch.equal(got, hq[0].transpose(0, 1))  # HF's own function, same bits
    both = Tables.of(rot.cos, rot.sin, dtype).apply(torch.cat([x, x[:, :2]], dim=1))
    assert torch.equal(both[:, :H], got) and torch.equal(both[:, H:], got[:, :2])


@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float32, torch.float64])
def test_rms_norm_equals_hf_formula(wdtype):
    from lengthwise.models.llama import RMSNorm
    from lengthwise.models import residual_dtype
    g = torch.Generator().manual_seed(1)
    n = RMSNorm(96, 1e-6).to(wdtype)
    with torch.no_grad():
        n.weight.copy_(torch.randn(96, generator=g))
    x = (torch.randn(11, 96, generator=g, dtype=torch.float64) * 5).to(residual_dtype(wdtype))
    xd = x.double()  # HF's LlamaRMSNorm formula in float64
    ref = n.weight.double() * (xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6))
    out = n(x)
    assert out.dtype == wdtype
    tol = {torch.bfloat16: 8e-3, torch.float32: 1e-6, torch.float64: 1e-13}[wdtype]
    assert ((out.double() - ref).abs() / ref.abs().clamp_min(1e-3)).max() < tol
