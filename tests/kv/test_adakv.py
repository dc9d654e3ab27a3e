"""Ada-KV (head-wise budgets) against an independent reference: HF transformers' own eager attention weights
(LlamaForCausalLM, float64), scored per kv head by SnapKV's formula and allotted across heads by kvpress's
AdaKVPress rule (each head's best alpha x budget first, then the best Hkv x budget of all heads), in plain torch
here. The head-wise cache must keep exactly those tokens per (layer, sequence, kv head), attend over them as HF's
model does with the rest masked, free the bytes (a region per head, read from storage), and pack as it runs
alone.
"""
import pytest
import torch
import torch.nn.functional as F

import lengthwise as lw
from lengthwise import LengthwiseError
from lengthwise.generate import Timing, decode_step, generate, new_cache, prefill

from conftest import rel_err
from test_policies import H, HKV, LAYERS, group_mean, hf_kept_logits, hf_run, models, newest, prompts_of  # noqa: F401

SPEC = "adakv:ratio=0.5,window=4,kernel=3"


def reference_heads(att, n, budget, alpha=0.2, window=4, kernel=3):
    """[Hkv] sets of positions kept, from HF's weights att [H, n, n] of one layer and sequence."""
    s = group_mean(att[:, -window:, :].mean(1))  # [Hkv, n]: SnapKV's window attention per kv head
    s = F.avg_pool1d(s[:, None], kernel, stride=1, padding=kernel // 2, count_include_pad=False)[:, 0]
    s = torch.where(newest(n, window), torch.inf, s)
    safe = max(1, int(budget * alpha)) if alpha > 0 and budget > 0 else 0  # AdaKVPress's n_safe
    for h in range(HKV):
        s[h, s[h].sort(descending=True, stable=True).indices[:safe]] = torch.inf
    top = s.reshape(-1).sort(descending=True, stable=True).indices[:HKV * budget]
    return [set((top[top // n == h] % n).tolist()) for h in range(HKV)]


def head_sets(cache, layer, i):
    """The positions sequence i keeps in one layer, per kv head, read from the head-wise cache."""
    out = []
    for h in range(cache.Hkv):
        v = h * cache.B + i
        a, m = int(cache.start_l[layer, v]), int(cache.kept[layer, v])
        out.append(set(cache.pos[layer][a:a + m, 0].tolist()))
    return out


def test_prefill_keeps_the_reference_tokens_per_head(models):
    hf, folder = models
    lm = lw.load(folder, device="cpu", dtype="float64", backend="reference", kv=SPEC)
    prompts = prompts_of(0)
    cache = new_cache(lm.module, prompts, 4, lm.kv)
    with torch.inference_mode():
        prefill(lm.module, prompts, cache, lm.backend, lm.kv)
    uneven = 0
    for i, p in enumerate(prompts):
        att, _ = hf_run(hf, p)
        n = len(p)
        budget = int(n * 0.5)
        for layer in range(LAYERS):
            got = head_sets(cache, layer, i)
            assert got == reference_heads(att[layer], n, budget), (i, layer)
            assert sum(map(len, got)) == HKV * budget
            uneven += len({len(g) for g in got}) > 1
    assert uneven >= 3  # the heads do keep counts of their own: the test would pass a per-sequence budget otherwise


@pytest.mark.parametrize("plan", ["eager", "graph"])
def test_attention_over_the_head_wise_cache_equals_hf_masked(models, plan):
    """After the context is compressed (heads keeping different counts), the question's and three decode steps'
    logits equal HF's model with each head's dropped context tokens masked; decode planned both as decode_step
    does and as the CUDA graph would (plan_decode_all, no host sync)."""
    from lengthwise.attention.layer import Step
    hf, folder = models
    lm = lw.load(folder, device="cpu", dtype="float64", kv=SPEC)  # cpu_flash
    m = lm.module
    prompts = prompts_of(7, (38, 27))
    context = [30, 19]
    feed = [[5, 17, 3], [11, 2, 40]]
    cache = new_cache(m, prompts, len(feed[0]) + 1, lm.kv, context=context)
    steps = []
    with torch.inference_mode():
        steps.append(prefill(m, prompts, cache, lm.backend, lm.kv))
        kept = [[head_sets(cache, layer, i) for layer in range(LAYERS)] for i in range(2)]
        for t in range(len(feed[0])):
            tok = torch.tensor([f[t] for f in feed])
            if plan == "eager":
                steps.append(decode_step(m, cache, tok, torch.arange(2), lm.backend, lm.kv))
            else:
                slots, positions, meta = cache.plan_decode_all()
                steps.append(m(tok, positions, Step(meta, m.mask, lm.backend, cache, slots)))
    for i, (p, c) in enumerate(zip(prompts, context)):
        heads = [x - set(range(c, len(p))) for layer in kept[i] for x in layer]
        assert sum(map(len, heads)) == LAYERS * HKV * int(c * 0.5) and len({len(x) for x in heads}) > 1
        assert all(set(range(c, len(p))) <= x for layer in kept[i] for x in layer)  # the question stays, every head
        ref = hf_kept_logits(hf, p + feed[i], c, kept[i])
        for t, got in enumerate(steps):
            assert rel_err(got[i], ref[len(p) - 1 + t]) <= 1e-6, (plan, i, t)


def test_packed_equals_one_at_a_time_and_ratio_0_is_the_full_cache(models):
    _, folder = models
    prompts = prompts_of(3)
    lm = lw.load(folder, device="cpu", dtype="float64", kv=SPEC)
    together = lm.generate_ids(prompts, max_new_tokens=5)
    assert together == [lm.generate_ids([p], max_new_tokens=5)[0] for p in prompts]
    full = lw.load(folder, device="cpu", dtype="float64")
    zero = lw.load(folder, device="cpu", dtype="float64", kv="adakv:ratio=0")
    assert zero.generate_ids(prompts, max_new_tokens=5) == full.generate_ids(prompts, max_new_tokens=5)


def test_the_cache_holds_what_the_heads_keep(models):
    """Bytes read from the pools' storage in decode: at ratio r each sequence's regions hold (1 - r) of its
    context, or its observation window where that is more (summed over heads, which differ), plus the new tokens, and nothing per head beyond what it keeps."""
    _, folder = models
    prompts = [list(range(3, 203)), list(range(10, 130))]
    for ratio in (0.5, 0.75):
        lm = lw.load(folder, device="cpu", dtype="bfloat16", kv=f"adakv:ratio={ratio}")
        full = lw.load(folder, device="cpu", dtype="bfloat16")
        t, tf = Timing(), Timing()
        generate(lm.module, prompts, 4, set(), backend=lm.backend, policy=lm.kv, timing=t)
        generate(full.module, prompts, 4, set(), backend=full.backend, timing=tf)
        for got, want, p in zip(t.kv_bytes, tf.kv_bytes, prompts):
            kept = max(int(len(p) * (1 - ratio)), min(len(p), 64))  # never below SnapKV's window (64)
            allowed = (kept + 4) / (len(p) + 4)
            # plus an int32 position per slot and kv head, beside its 2 x D bfloat16 key and value: 1 / D more
            D = lm.module.cfg.head_dim
            assert abs(got - want * allowed * (1 + 1 / D)) <= 0.005 * want, (ratio, got, want, allowed)


@pytest.mark.parametrize("bad,needle", [
    ("adakv:ratio=0.5,alpha=1.5", "alpha"),
    ("adakv:ratio=0.5,every=4", "drop every"),
    ("adakv:ratio=1.5", "ratio must be in"),
    ("adakv:ratio=0.5,kernel=4", "kernel an odd number"),
])
def test_bad_specs_get_one_line(bad, needle):
    from lengthwise import kv
    with pytest.raises(LengthwiseError, match=needle):
        kv.parse(bad)


def test_with_an_fp8_cache_each_head_keeps_what_it_keeps_in_bf16(models):
    """fp8 composes: the same head budgets (scored on the dequantized keys), packed as alone, at (D + 2) / 2D
    of the bfloat16 cache's bytes."""
    _, folder = models
    prompts = prompts_of(5)
    fp8 = lw.load(folder, device="cpu", dtype="float32", kv=SPEC, kv_dtype="fp8")
    bf16 = lw.load(folder, device="cpu", dtype="float32", kv=SPEC, kv_dtype="bf16")
    together = fp8.generate_ids(prompts, max_new_tokens=4)
    assert together == [fp8.generate_ids([p], max_new_tokens=4)[0] for p in prompts]
    t8, t16 = Timing(), Timing()
    generate(fp8.module, prompts, 4, set(), backend=fp8.backend, policy=fp8.kv, kv_dtype="fp8", timing=t8)
    generate(bf16.module, prompts, 4, set(), backend=bf16.backend, policy=bf16.kv, kv_dtype="bf16", timing=t16)
    D = fp8.module.cfg.head_dim
    for a, b in zip(t8.kv_bytes, t16.kv_bytes):  # per slot and head: 2 (D + 2) + 4 bytes against 4 D + 4
        assert abs(a / b - (2 * (D + 2) + 4) / (4 * D + 4)) < 0.03, (a, b)


def test_a_sequence_that_stops_early_leaves_the_others_as_alone(models):
    """Decode over a subset of the cache's sequences (one stopped at an end id) plans every head of each active
    sequence, and of those only."""
    _, folder = models
    prompts = prompts_of(1)
    lm = lw.load(folder, device="cpu", dtype="float64", kv=SPEC)
    stop = lm.generate_ids(prompts, max_new_tokens=12)[1][3]
    out = generate(lm.module, prompts, 12, {stop}, backend=lm.backend, policy=lm.kv)
    assert any(len(c.token_ids) < 12 for c in out)
    assert [c.token_ids for c in out] == [generate(lm.module, [p], 12, {stop}, backend=lm.backend,
                                                   policy=lm.kv)[0].token_ids for p in prompts]
