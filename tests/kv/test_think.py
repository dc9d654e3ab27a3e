"""ThinK (kv/think.py) against an independent reference: HF transformers' own LlamaForCausalLM in float64, with an
attention function registered through HF's AttentionInterface that applies kvpress's ThinKPress formula in plain
torch (each channel's mean q^2 over the context's last `window` queries, averaged over the query group, times its
mean k^2 over the context's keys; the lowest int(D * 2 * ratio) removed), and scores every later query over the
kept channels only (zeroed on both sides, as kvpress zeroes pruned key channels).

lengthwise stores those keys at the kept width for real, so what is checked: the kept channels, the logits of the
question after a pruned context and of a decode step, packed against one sequence at a time, ratio 0 against no
policy bit for bit, the bytes, and the bad-input lines.
"""
import pytest
import torch
import transformers
from transformers import AttentionInterface

import lengthwise as lw
from lengthwise import kv
from lengthwise.errors import LengthwiseError
from lengthwise.generate import decode_step, generate_ids, new_cache, prefill

from conftest import rel_err, tiny_hf_causal

LENS = (45, 12, 33)
CONTEXT = (38, 7, 30)  # where each prompt's context ends: the rest is its question
WINDOW = 8


def ref_channels(q, k, ratio, groups):
    """kvpress's ThinKPress.compress in float64: q [H, w, D] the window's queries, k [Hkv, S, D] the context's
    keys -> the set of kept channels per kv head."""
    qn = (q ** 2).mean(1).view(k.shape[0], groups, -1).mean(1)  # [Hkv, D]
    kn = (k ** 2).mean(1)
    n_pruned = int(k.shape[-1] * 2 * ratio)
    drop = (qn * kn).topk(n_pruned, dim=-1, largest=False).indices
    return [set(range(k.shape[-1])) - set(d.tolist()) for d in drop]


class ThinKRef:
    """An HF attention function: causal eager attention where queries past `context` see the context's keys at
    their layer's kept channels only (the rest zeroed, as kvpress does) and the later keys whole. Records the kept
    channels per layer."""

    def __init__(self, ratio: float, context: int):
        self.ratio, self.context, self.kept = ratio, context, {}

    def __call__(self, module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        B, H, T, D = query.shape
        Hkv = key.shape[1]
        g = H // Hkv
        c = self.context
        kept = ref_channels(query[0, :, c - min(WINDOW, c):c], key[0, :, :c], self.ratio, g)
        self.kept[module.layer_idx] = kept
        mask = torch.zeros(Hkv, D, dtype=query.dtype)
        for h, s in enumerate(kept):
            mask[h, sorted(s)] = 1
        mask_q = mask.repeat_interleave(g, 0)[None, :, None, :]  # [1, H, 1, D]
        k = key.repeat_interleave(g, 1)
        full = query @ k.transpose(-1, -2) * scaling  # [B, H, T, S]
        # the context's keys at their kept channels, the later ones whole (kvpress compresses the context only)
        k_thin = torch.where((torch.arange(k.shape[2]) < c)[None, None, :, None], k * mask_q, k)
        thin = query @ k_thin.transpose(-1, -2) * scaling
        s = torch.where((torch.arange(T) >= c)[None, None, :, None], thin, full)
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        w = torch.softmax(s, dim=-1)
        return (w @ value.repeat_interleave(g, 1)).transpose(1, 2).contiguous(), w


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    hf, folder = tiny_hf_causal("llama", tmp_path_factory.mktemp("think"), num_hidden_layers=3)
    return hf.double(), folder


def prompts_of(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 211, (n,), generator=g).tolist() for n in LENS]


def hf_ref(hf, ids, context, ratio):
    """HF's logits [T, V] of one whole sequence with ThinK on past `context`, and the kept channels per layer."""
    ref = ThinKRef(ratio, context)
    AttentionInterface.register("think_ref", ref)
    hf.set_attn_implementation("think_ref")
    try:
        with torch.no_grad():
            out = hf(torch.tensor([ids]), use_cache=False).logits[0]
    finally:
        hf.set_attn_implementation("eager")
    return out, ref.kept


@pytest.mark.parametrize("ratio", [0.25, 0.375])
def test_question_and_decode_logits_match_hf_with_kvpress_formula(models, ratio):
    hf, folder = models
    lm = lw.load(folder, device="cpu", dtype="float32")
    m = lm.module
    prompts = prompts_of(1)
    pol = kv.parse(f"think:ratio={ratio},window={WINDOW}")
    cache = new_cache(m, prompts, 2, pol, context=list(CONTEXT))
    with torch.inference_mode():
        logits = prefill(m, prompts, cache, lm.backend, pol)  # [B, V] the last question token's
        nxt = torch.tensor([5, 17, 101])
        step = decode_step(m, cache, nxt, torch.arange(len(prompts)), lm.backend, pol)
        # a decode step of some sequences only (the others finished): each reads its own channels
        some = torch.tensor([0, 2])
        step2 = decode_step(m, cache, torch.tensor([9, 44]), some, lm.backend, pol)
    D = m.cfg.head_dim
    for layer in range(m.cfg.n_layers):  # stored for real at the kept width
        assert cache.k[layer].shape[-1] == D - int(D * 2 * ratio)
    for i, (ids, c) in enumerate(zip(prompts, CONTEXT)):
        ref, kept = hf_ref(hf, ids + [int(nxt[i])], c, ratio)
        for layer in range(m.cfg.n_layers):
            got = [set(x.tolist()) for x in cache.chan[layer][i]]
            assert got == kept[layer], (i, layer)
        assert rel_err(logits[i], ref[len(ids) - 1]) < 1e-4
        assert rel_err(step[i], ref[len(ids)]) < 1e-4
        if i in (0, 2):
            ref2, _ = hf_ref(hf, ids + [int(nxt[i]), {0: 9, 2: 44}[i]], c, ratio)
            assert rel_err(step2[i // 2], ref2[-1]) < 1e-4
        # and the pruning matters: the full model's logits differ
        full = hf(torch.tensor([ids]), use_cache=False).logits[0, -1]
        assert rel_err(full, ref[len(ids) - 1]) > 1e-3


def test_without_context_the_whole_prompt_is_scored(models):
    """No context given: the channels come from the whole prompt; the first decode step reads them."""
    hf, folder = models
    lm = lw.load(folder, device="cpu", dtype="float32")
    m = lm.module
    prompts = prompts_of(2)
    pol = kv.ThinK(ratio=0.25, window=WINDOW)
    cache = new_cache(m, prompts, 1, pol)
    with torch.inference_mode():
        prefill(m, prompts, cache, lm.backend, pol)
        step = decode_step(m, cache, torch.tensor([3, 4, 5]), torch.arange(3), lm.backend, pol)
    for i, ids in enumerate(prompts):
        ref, _ = hf_ref(hf, ids + [3 + i], len(ids), 0.25)
        assert rel_err(step[i], ref[-1]) < 1e-4


def test_packed_equals_one_at_a_time(models):
    _, folder = models
    lm = lw.load(folder, device="cpu", dtype="float32")
    prompts = prompts_of(3)
    pol = kv.parse("think:ratio=0.25")
    both = generate_ids(lm.module, prompts, 6, set(), backend=lm.backend, policy=pol, context=list(CONTEXT))
    alone = [generate_ids(lm.module, [p], 6, set(), backend=lm.backend, policy=pol, context=[c])[0]
             for p, c in zip(prompts, CONTEXT)]
    assert both == alone


def test_ratio_zero_is_the_full_cache_bit_for_bit(models):
    _, folder = models
    lm = lw.load(folder, device="cpu", dtype="float32")
    prompts = prompts_of(4)
    m = lm.module
    outs = []
    for pol in (kv.Full(), kv.parse("think:ratio=0")):
        cache = new_cache(m, prompts, 1, pol)
        with torch.inference_mode():
            outs.append(prefill(m, prompts, cache, lm.backend, pol))
        assert cache.kept is None  # no evicting machinery at all
    assert torch.equal(outs[0], outs[1])


def test_bytes_fall_with_the_ratio(tmp_path):
    """bfloat16, head_dim 64: the cache after prefill holds <= (1 - ratio) x full + 2%, read from the storage (the
    slots' positions take 1.6% at this width, and the new tokens' keys stay whole)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=128, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m", safe_serialization=True)
    lm = lw.load(tmp_path / "m", device="cpu", dtype="bfloat16")
    m = lm.module
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (700, 450)]  # 4 new tokens: a 0.7% tail
    full = new_cache(m, prompts, 4)
    for ratio in (0.125, 0.25, 0.375):
        pol = kv.ThinK(ratio=ratio)
        cache = new_cache(m, prompts, 4, pol)
        with torch.inference_mode():
            prefill(m, prompts, cache, lm.backend, pol)
        from lengthwise.generate import decode_need
        cache.shrink(decode_need(pol, cache, [len(p) for p in prompts], 4))
        assert cache.nbytes <= ((1 - ratio) + 0.02) * full.nbytes, (ratio, cache.nbytes, full.nbytes)
        assert cache.nbytes >= (1 - ratio) * full.nbytes  # and the values and later keys are all still there


def test_fp8_keys_compose(models):
    """think with an fp8 cache: the kept channels stored as float8 with their scales; the question's logits
    stay near the float64 reference."""
    hf, folder = models
    lm = lw.load(folder, device="cpu", dtype="float32")
    m = lm.module
    prompts = prompts_of(1)
    pol = kv.ThinK(ratio=0.25, window=WINDOW)
    cache = new_cache(m, prompts, 1, pol, context=list(CONTEXT), kv_dtype="fp8")
    with torch.inference_mode():
        logits = prefill(m, prompts, cache, lm.backend, pol)
    assert cache.k[0].dtype == torch.float8_e4m3fn and cache.k[0].shape[-1] == m.cfg.head_dim // 2
    for i, (ids, c) in enumerate(zip(prompts, CONTEXT)):
        ref, kept = hf_ref(hf, ids, c, 0.25)
        # the channels are scored on the stored (fp8) keys: nearly, not exactly, the float64 choice
        got = [set(x.tolist()) for x in cache.chan[0][i]]
        assert sum(len(a & b) for a, b in zip(got, kept[0])) >= 0.75 * sum(map(len, kept[0]))
        assert rel_err(logits[i], ref[-1]) < 0.1


@pytest.mark.parametrize("spec, msg", [
    ("think:ratio=0.5", "ratio must be in [0, 0.5)"),
    ("think", "give ratio=R"),
    ("think:ratio=0.25,every=4", "drop every"),
    ("think:ratio=0.25,window=0", "window must be >= 1"),
])
def test_bad_specs_are_one_line(spec, msg):
    with pytest.raises(LengthwiseError) as e:
        kv.parse(spec)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_a_head_too_narrow_for_the_ratio_is_refused(models):
    _, folder = models  # head_dim 16: ratio 0.01 would remove int(0.32) = 0 channels
    lm = lw.load(folder, device="cpu", dtype="float32")
    with pytest.raises(LengthwiseError, match="removes int"):
        generate_ids(lm.module, [[1, 2, 3]], 2, set(), backend=lm.backend, policy=kv.ThinK(ratio=0.01))
    with pytest.raises(LengthwiseError, match="removes int"):
        lw.load(folder, device="cpu", dtype="float32", kv="think:ratio=0.01")
    with pytest.raises(LengthwiseError, match="use ratio >= ") as e:  # the bound it names passes: 1/32 = 0.03125
        lw.load(folder, device="cpu", dtype="float32", kv="think:ratio=0.03")
    bound = str(e.value).rsplit(">= ", 1)[1]
    assert bound == "0.03125"
    lw.load(folder, device="cpu", dtype="float32", kv=f"think:ratio={bound}")
