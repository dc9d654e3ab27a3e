"""Remaps and attention patterns: position ids by hand, two-region attention against an explicit
per-pair float64 reference, packed == per-sequence, and cached decode == one full forward."""
import pytest
import torch

import lengthwise as lw
from lengthwise.attention import AttnMeta, MaskPattern
from lengthwise.attention.two_region import attend_two_region
from lengthwise.kv import RaggedKVCache
from lengthwise.models.llama import Step
from lengthwise.positions import (STRING, DistanceCap, LambdaShape, Rotary, SelfExtend, Sinks, parse)
from lengthwise.ragged import RaggedBatch
from conftest import rel_err, tiny_hf_causal

P = torch.arange(20)


def test_self_extend_positions_by_hand():
    s = SelfExtend(group=4, window=6)  # queries shift by W - W//G = 6 - 1 = 5
    assert s.far_q(P, 32).tolist() == [5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7, 8, 8, 8, 8, 9, 9, 9, 9]
    assert s.far_k(P, 32).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4]
    assert s.near_window(32) == 6
    # query 19 sees key 13 (distance 6, the first grouped one) at 9 - 3 = 6 and key 0 at 9 - 0 = 9
    assert s.far_q(P, 32)[19] - s.far_k(P, 32)[13] == 6 and s.far_q(P, 32)[19] - s.far_k(P, 32)[0] == 9


def test_distance_cap_positions_by_hand():
    s = DistanceCap(cap=5)
    assert s.near_window(32) == 5 and set(s.far_q(P, 32).tolist()) == {5} and set(s.far_k(P, 32).tolist()) == {0}
    assert DistanceCap().near_window(32) == 32  # default: the trained length


def test_string_positions_by_hand():
    s = STRING(shift=8, local=2)  # distance d >= 8 is seen as d - 6
    assert s.far_q(P, 32).tolist() == [p - 6 for p in range(20)] and s.far_k(P, 32) is None
    assert s.near_window(32) == 8
    assert STRING().near_window(3000) == 990  # default shift int(0.33 L)


def test_sinks_positions_by_hand():
    s = Sinks(sinks=2, window=5)  # the rolling cache holds 7 tokens: a query sits at most at index 6
    assert s.far_q(P, 32).tolist() == [0, 1, 2, 3, 4, 5] + [6] * 14 and s.far_k(P, 32) is None
    assert (s.near_window(32), s.n_sinks()) == (5, 2)
    assert Sinks(sinks=4).near_window(100) == 96


def test_lambda_positions_by_hand():
    s = LambdaShape(n_global=3, window=6, cap=6)
    assert s.far_q(P, 32).tolist() == [0, 1, 2, 3, 4, 5] + [6] * 14
    assert set(s.far_k(P, 32).tolist()) == {0} and s.n_sinks() == 3


# --- explicit reference: per pair (i, j), visibility and the seen distance, written from each paper --

def _seen(scheme, i: int, j: int):
    """(visible, distance as the method sees it) for query i and key j of one sequence."""
    d = i - j
    if d < 0:
        return False, 0
    if isinstance(scheme, SelfExtend):
        G, W = scheme.group, scheme.window
        return True, d if d < W else (i // G + W - W // G) - j // G
    if isinstance(scheme, DistanceCap):
        return True, min(d, scheme.cap)
    if isinstance(scheme, STRING):
        return True, d if d < scheme.shift else d - scheme.shift + scheme.local
    if isinstance(scheme, Sinks):
        if d < scheme.window:
            return True, d
        return j < scheme.sinks, min(i, scheme.sinks + scheme.window - 1) - j
    if isinstance(scheme, LambdaShape):
        if d < scheme.window:
            return True, d
        return j < scheme.n_global, min(i, scheme.cap)
    return True, d


def _rotate(x, dist, inv):
    """x [..., D] rotated by angle dist * inv (HF's half layout), float64."""
    ang = dist[..., None] * inv
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def _explicit(scheme, q, k, v, inv):
    """One sequence: q [L, H, D], k, v [L, Hkv, D] unrotated -> [L, H, D]; float64, every pair spelled out."""
    L, H, D = q.shape
    rep = H // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    vis = torch.zeros(L, L, dtype=torch.bool)
    dist = torch.zeros(L, L, dtype=torch.float64)
    for i in range(L):
        for j in range(L):
            vis[i, j], dist[i, j] = _seen(scheme, i, j)
    # RoPE: <R(a) q, R(b) k> = <R(a - b) q, k>; rotate each query by the seen distance to each key
    qd = _rotate(q[:, None].expand(L, L, H, D), dist[:, :, None].expand(L, L, H), inv)  # [L, L, H, D]
    s = torch.einsum("ijhd,jhd->hij", qd, k) / D ** 0.5
    p = torch.softmax(s.masked_fill(~vis, float("-inf")), -1)
    return torch.einsum("hij,jhd->ihd", p, v)


SCHEMES = [SelfExtend(group=3, window=5), SelfExtend(group=4, window=8), DistanceCap(cap=6), STRING(shift=9, local=2),
           Sinks(sinks=2, window=6), LambdaShape(n_global=3, window=7, cap=7)]


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.spec())
def test_two_region_attention_matches_explicit_pairs(scheme):
    D, H, Hkv, trained, lens = 16, 4, 2, 16, [37, 3, 21, 12]
    g = torch.Generator().manual_seed(0)
    T = sum(lens)
    q = torch.randn(T, H, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(T, Hkv, D, generator=g, dtype=torch.float64) for _ in range(2))
    b = RaggedBatch.from_lens(torch.zeros(T, dtype=torch.int64), torch.tensor(lens))
    meta = AttnMeta.packed(b.cu_seqlens, b.max_seqlen)
    rot = Rotary(scheme, D, 10000.0, trained)(b.positions, meta)
    qn, kn = lw.positions.apply_rope(q, rot.cos, rot.sin), lw.positions.apply_rope(k, rot.cos, rot.sin)
    f = rot.far
    qf = lw.positions.apply_rope(q, f.cos_q, f.sin_q)
    kf = kn if f.cos_k is None else lw.positions.apply_rope(k, f.cos_k, f.sin_k)
    out = attend_two_region(qn, kn, v, qf, kf, meta, MaskPattern(causal=True), f, "reference")
    # the CPU fast backend in float32 (its windowed near pass and its far pass with keyless queries)
    fast = attend_two_region(*(t.float() for t in (qn, kn, v, qf, kf)), meta, MaskPattern(causal=True), f, "cpu_flash")
    inv = 1.0 / 10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    for a, z in zip(b.cu_seqlens[:-1].tolist(), b.cu_seqlens[1:].tolist()):
        ref = _explicit(scheme, q[a:z], k[a:z], v[a:z], inv)
        assert rel_err(out[a:z], ref) < 1e-5, (a, z)  # float32 rotation tables, float64 elsewhere
        assert rel_err(fast[a:z], ref) < 1e-5, (a, z)


# --- whole model: packed == per sequence, and cached decode == one full forward --------------------

ALL = ["none", "linear:factor=2", "ntk:factor=2", "dynamic_ntk:factor=2", "yarn:factor=4", "yarn:factor=8,dynamic=true",
       "giraffe:truncate=16", "longrope:factors=1/1/1.5/2/2/3/3/4",
       "longrope:factors=1/1/1.5/2/2/3/3/4,short_factors=1/1/1/1/1.1/1.1/1.2/1.2",
       "self_extend:group=4,window=8", "distance_cap:cap=12",
       "string:shift=10,local=3", "sinks:sinks=2,window=9", "lambda:n_global=3,window=10,cap=10"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    _, f = tiny_hf_causal("llama", tmp_path_factory.mktemp("remap"), max_position_embeddings=32)
    return f


def _seqs(lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 211, (n,), generator=g).tolist() for n in lens]


@pytest.mark.parametrize("spec", ALL)
def test_packed_equals_per_sequence(folder, spec):
    lm = lw.load(folder, device="cpu", dtype="float64", positions=spec)
    seqs = _seqs([min(n, lm.context_length) for n in (70, 5, 33, 1, 64)])
    for s, p in zip(seqs, lm.logits(seqs)):
        assert rel_err(p, lm.logits([s])[0]) <= 1e-10, len(s)


@pytest.mark.parametrize("spec", [s for s in ALL if not parse(s).per_length()])  # dynamic: cached keys keep old scales
def test_cached_decode_equals_full_forward(folder, spec):
    """Prefill part of each sequence into the ragged cache, feed the rest one token per step."""
    lm = lw.load(folder, device="cpu", dtype="float64", positions=spec)
    model, split = lm.module, [25, 1, 14]  # a sequence shorter than its sinks at first
    seqs = _seqs([min(n, lm.context_length) for n in (60, 20, 41)], seed=3)
    full = lm.logits(seqs)
    cache = RaggedKVCache(model.cfg.n_layers, [len(s) for s in seqs], model.cfg.n_kv_heads, model.cfg.head_dim,
                          torch.float64, "cpu", far_keys=model.rotary.far_keys)
    for pool in (cache.k, cache.v, cache.k_far):  # slots not yet written must never leak into a result
        if pool is not None:
            pool.fill_(float("nan"))
    heads = [s[:n] for s, n in zip(seqs, split)]
    b = RaggedBatch.from_lists(heads)
    slots, pos, meta = cache.plan(torch.arange(3), torch.tensor(split))
    got = [list(x) for x in b.split(model(b.tokens, pos, Step(meta, model.mask, "reference", cache, slots)))]
    for t in range(max(len(s) - n for s, n in zip(seqs, split))):
        active = [i for i, (s, n) in enumerate(zip(seqs, split)) if n + t < len(s)]
        tok = torch.tensor([seqs[i][split[i] + t] for i in active])
        slots, pos, meta = cache.plan(torch.tensor(active), torch.ones(len(active), dtype=torch.int64))
        out = model(tok, pos, Step(meta, model.mask, "reference", cache, slots))
        for row, i in enumerate(active):
            got[i].append(out[row])
    for i, s in enumerate(seqs):
        assert rel_err(torch.stack(got[i]), full[i]) <= 1e-10, i


@pytest.mark.parametrize("spec", ["none", "self_extend:group=4,window=8", "sinks:sinks=2,window=9",
                                  "lambda:n_global=3,window=10,cap=10", "string:shift=10,local=3"])
def test_cpu_fast_backend_matches_float64(folder, spec):
    """float32 on the CPU picks cpu_flash; it must give the float64 reference's logits."""
    fast = lw.load(folder, device="cpu", dtype="float32", positions=spec)
    exact = lw.load(folder, device="cpu", dtype="float64", positions=spec)
    assert (fast.backend.kernel, exact.backend.kernel) == ("cpu_flash", "reference")
    seqs = _seqs([min(n, exact.context_length) for n in (70, 5, 33, 1, 64)], seed=7)
    for a, b in zip(fast.logits(seqs), exact.logits(seqs)):
        assert rel_err(a, b) <= 1e-5


def test_generation_packed_equals_one_at_a_time(folder):
    lm = lw.load(folder, device="cpu", dtype="float32", positions="self_extend:group=4,window=8")
    prompts = _seqs([50, 9, 31], seed=5)
    batched = lm.generate_ids(prompts, max_new_tokens=12)
    assert batched == [lm.generate_ids([p], max_new_tokens=12)[0] for p in prompts]


# --- bad input: one clear error each -------------------------------------------------------------

@pytest.mark.parametrize("spec,match", [
    ("warp:factor=2", "unknown position scheme 'warp'"),
    ("yarn:factor=0", "factor must be a finite number > 0"),
    ("linear:factor=-2", "factor must be a finite number > 0"),
    ("ntk:factor=0.5", "factor must be >= 1"),
    ("yarn:facter=2", "cannot read option 'facter=2'"),
    ("yarn:factor=big", "factor='big' is not a number"),
    ("self_extend:group=4,window=64", "window=64 must be shorter than the 32-token trained context"),
    ("sinks:sinks=4,window=40", "beyond the 32-token trained context"),
    ("distance_cap:cap=33", "beyond the 32-token trained context"),
    ("longrope:factors=1/2", "2 factors given, the model's head_dim 16 needs 8"),
    ("longrope:factors=@/nonexistent.json", "not numbers"),
    ("longrope:factors=1/2/3/4/5/6/7/nan", "finite number > 0"),
    ("linear:factor=inf", "factor must be a finite number"),
    ("sinks:sinks=32", "leaves no window"),
    ("sinks:sinks=40", "leaves no window"),
    # original: the trained length a scaling measures against; negative or past the trained context is refused
    ("llama3:original=-3", "llama3: original must be >= 0"),
    ("longrope:factors=1/1/1/1/2/2/2/2,original=-1", "longrope: original must be >= 0"),
    ("yarn:factor=4,original=1000", "original=1000 is past this model's 32-token trained context"),
    ("llama3:factor=4,original=33", "past this model's 32-token trained context"),
    ("none:factor=2", "write e.g. none:beyond=true"),
])
def test_bad_schemes_fail_with_one_line(folder, spec, match):
    with pytest.raises(lw.LengthwiseError, match=match):
        lw.load(folder, device="cpu", positions=spec)


def test_rope_scheme_on_bert_is_refused(tmp_path):
    import transformers
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=48, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert", safe_serialization=True)
    with pytest.raises(lw.LengthwiseError, match="learned absolute positions"):
        lw.load(tmp_path / "bert", device="cpu", positions="yarn:factor=4")


@pytest.mark.parametrize("rope", [{"rope_type": "linear"}, {"rope_type": "yarn", "factor": "x"},
                                  {"rope_type": "llama3", "factor": 8.0}, {"rope_type": "longrope"}, [1, 2],
                                  {"rope_type": "su_scaled", "factor": 2.0}])
def test_malformed_hf_rope_is_one_line(rope):
    from lengthwise.evaluation import EvalConfig
    with pytest.raises(lw.LengthwiseError):
        EvalConfig(model="m", tasks=["passkey"], lengths=[8], depths=[0.0], backend="hf", hf_rope=rope)


def test_remap_needs_a_far_key_cache(folder):
    lm = lw.load(folder, device="cpu", positions="self_extend:group=4,window=8")
    m = lm.module
    cache = RaggedKVCache(m.cfg.n_layers, [20], m.cfg.n_kv_heads, m.cfg.head_dim, torch.float32, "cpu")  # no far_keys
    slots, pos, meta = cache.plan(torch.arange(1), torch.tensor([20]))
    with pytest.raises(lw.LengthwiseError, match="far_keys=True"):
        m(torch.ones(20, dtype=torch.int64), pos, Step(meta, m.mask, "reference", cache, slots))


def test_remap_keeps_the_checkpoints_own_frequencies(tmp_path):
    """A checkpoint trained with linear x2 scaling, remapped: the near pass equals the checkpoint as trained."""
    hf, f = tiny_hf_causal("llama", tmp_path, max_position_embeddings=64,
                           rope_parameters={"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0})
    s = _seqs([30], seed=9)[0]
    own = lw.load(f, device="cpu", dtype="float64").logits([s])[0]
    remapped = lw.load(f, device="cpu", dtype="float64", positions="self_extend:group=4,window=40").logits([s])[0]
    assert rel_err(remapped, own) <= 1e-10  # 30 tokens < window: every key is near


def test_spec_round_trips():
    for spec in ALL[1:]:
        assert parse(parse(spec).spec()) == parse(spec)


def test_remap_on_a_sliding_window_model_is_refused(tmp_path):
    _, f = tiny_hf_causal("mistral", tmp_path, sliding_window=16, max_position_embeddings=64)
    with pytest.raises(lw.LengthwiseError, match="sliding window"):
        lw.load(f, device="cpu", positions="self_extend:group=4,window=8")
    assert lw.load(f, device="cpu", positions="yarn:factor=2").context_length == 128  # scalings still apply


def test_a_cache_that_cannot_fit_is_one_line(folder, monkeypatch):
    """An unbounded scheme lifts the context limit; memory still bounds generation, with a clear error."""
    import lengthwise.kv.cache as kv
    monkeypatch.setattr(kv.os, "sysconf", lambda name: {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}[name])  # 4 MB free
    lm = lw.load(folder, device="cpu", positions="distance_cap:cap=12")
    with pytest.raises(lw.LengthwiseError, match=r"KV cache for 100003 tokens .* needs .* GiB and 0.0 GiB is free"):
        lm.generate_ids([[1, 2, 3]], max_new_tokens=100_000)
    assert len(lm.generate_ids([[1, 2, 3]], max_new_tokens=4)[0]) == 4  # small caches still fit


@pytest.mark.parametrize("spec", ["none", "self_extend:group=4,window=8", "distance_cap:cap=12"])
def test_split_kv_decode_inside_the_model(folder, spec, monkeypatch):
    """Every decode step's attention (and a remap's far pass) split in 3 chunks: the same logits and tokens."""
    import lengthwise.attention as att
    lm = lw.load(folder, device="cpu", dtype="float64", positions=spec)
    prompts = _seqs([min(n, lm.context_length - 10) for n in (50, 9, 31)], seed=11)
    want = lm.generate_ids(prompts, max_new_tokens=10)
    calls = []

    def three(q, meta, mask, backend):
        ok = meta.max_q == 1 and mask.window is None and meta.cu_q.shape[0] == q.shape[0] + 1
        calls.append(ok)
        return 3 if ok else 1

    monkeypatch.setattr(att, "auto_splits", three)
    assert lm.generate_ids(prompts, max_new_tokens=10) == want
    assert any(calls)  # decode steps really went through the split path
