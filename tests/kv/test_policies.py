"""The KV-compression policies against an independent reference: HF transformers' own eager attention weights and
cached keys (LlamaForCausalLM, float64), scored by each paper's formula in plain torch here, top-k per kv head.

What lengthwise's cache keeps after prefill must be exactly that set, in packed batches of mixed lengths, per
layer and kv head; accumulated scores (H2O, A2SF) must equal HF's column sums across prefill chunks and decode
steps; the question stays out of compression where the context's end is given; the bytes follow the budgets.
"""
import json

import pytest
import torch
import torch.nn.functional as F

import lengthwise as lw
from lengthwise import kv
from lengthwise.generate import capacities, decode_step, new_cache, prefill

from conftest import rel_err, tiny_hf_causal

LENS = (41, 9, 30, 23)
LAYERS, H, HKV = 3, 4, 2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    hf, folder = tiny_hf_causal("llama", tmp_path_factory.mktemp("policies"), num_hidden_layers=LAYERS)
    return hf.double(), folder


def prompts_of(seed: int, lens=LENS):
    """Distinct token ids within a prompt: two copies of a token would tie on key norm up to rounding."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(211, generator=g)[:n].tolist() for n in lens]


def top(scores, k):
    """The k best of scores [S], ties to the older token (as the cache breaks them)."""
    return set(scores.sort(descending=True, stable=True).indices[:k].tolist())


def hf_run(hf, ids):
    """-> attentions [L][H, n, n] and post-RoPE keys [L][Hkv, n, D] of HF's model on one sequence."""
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_attentions=True, use_cache=True)
    cache = out.past_key_values
    keys = [cache.layers[i].keys[0] for i in range(LAYERS)]
    return [a[0] for a in out.attentions], keys


def group_mean(x):  # [H, S] -> [Hkv, S]
    return x.view(HKV, H // HKV, -1).mean(1)


def newest(n, count):  # [S] bool: the count newest of n
    return torch.arange(n) >= n - count


def reference_scores(name, spec, att, keys, n, budget):
    """[Hkv, n] float64 scores by the paper's formula, from HF's weights att [H, n, n] and keys [Hkv, n, D]."""
    if name == "streaming":
        p = torch.arange(n, dtype=torch.float64)
        return torch.where(p < spec.get("sinks", 4), torch.inf, p).expand(HKV, -1)
    if name == "knorm":
        return -keys.norm(dim=-1)
    if name == "tova":
        return att[:, -1, :].mean(0).expand(HKV, -1)
    if name in ("snapkv", "pyramidkv"):
        w, k = spec.get("window", 64), spec.get("kernel", 5)
        s = group_mean(att[:, -w:, :].mean(1))  # [Hkv, n]
        s = F.avg_pool1d(s[:, None], k, stride=1, padding=k // 2, count_include_pad=False)[:, 0]
        return torch.where(newest(n, w), torch.inf, s)
    if name in ("h2o", "a2sf"):
        factor = spec.get("factor", 0.99) if name == "a2sf" else 1.0
        wt = factor ** torch.arange(n - 1, -1, -1, dtype=torch.float64)  # query i weighs factor**(n-1-i)
        s = group_mean((att * wt[None, :, None]).sum(1))
        share = spec.get("recent", 0.5 if name == "h2o" else 0.0)
        return torch.where(newest(n, int(budget * share)), torch.inf, s)
    raise AssertionError(name)


def kept_sets(cache, layer, i):
    """The positions sequence i keeps in one layer, per kv head: [Hkv] sets."""
    a, m = int(cache.start_l[layer, i]), int(cache.kept[layer, i])
    pos = cache.pos[layer][a:a + m]  # [m, Hkv]
    return [set(pos[:, h].tolist()) for h in range(pos.shape[1])]


def pyramid_budgets(n, ratio, window, beta, layers):
    """kvpress's PyramidKV layer budgets (KVCache-Factory's formula), written out by hand for one prompt."""
    b = n * (1 - ratio)
    lo, hi = b / beta, 2 * b - b / beta
    if hi >= n - window:
        hi, lo = n - window, 2 * b - (n - window)
    if not (n >= hi >= lo >= window):
        return [int(n * (1 - ratio))] * layers
    return [round(hi - l * (hi - lo) / (layers - 1)) for l in range(layers)]


CASES = [("streaming", "tokens=12,sinks=3", {"sinks": 3}), ("knorm", "tokens=10", {}),
         ("tova", "tokens=11", {}), ("snapkv", "tokens=14,window=4,kernel=3", {"window": 4, "kernel": 3}),
         ("h2o", "tokens=12", {}), ("a2sf", "tokens=12,factor=0.9", {"factor": 0.9}),
         ("h2o", "ratio=0.5,recent=0.25", {"recent": 0.25})]


@pytest.mark.parametrize("name,opts,spec", CASES, ids=[f"{n}:{o}" for n, o, _ in CASES])
def test_prefill_keeps_the_reference_top_k_per_layer_and_head(models, name, opts, spec):
    hf, folder = models
    lm = lw.load(folder, device="cpu", dtype="float64", backend="reference", kv=f"{name}:{opts}")
    prompts = prompts_of(0)
    cache = new_cache(lm.module, prompts, 4, lm.kv, chunk=64)  # one chunk: every layer attends to the whole prompt
    with torch.inference_mode():
        prefill(lm.module, prompts, cache, lm.backend, lm.kv, chunk=64)
    for i, p in enumerate(prompts):
        att, keys = hf_run(hf, p)
        n = len(p)
        budget = int(lm.kv.keep(torch.tensor([n]))[0])
        for layer in range(LAYERS):
            assert int(cache.kept[layer, i]) == budget
            ref = reference_scores(name, spec, att[layer], keys[layer], n, budget)
            want = [top(ref[h], budget) for h in range(HKV)]
            assert kept_sets(cache, layer, i) == want, (name, i, layer)


def test_pyramidkv_budgets_per_layer_and_pools_sized_to_them(models):
    hf, folder = models
    lens = (200, 120, 90)
    lm = lw.load(folder, device="cpu", dtype="float64", backend="reference", kv="pyramidkv:ratio=0.5,window=8,beta=4")
    prompts = prompts_of(5, lens)
    cache = new_cache(lm.module, prompts, 1, lm.kv, chunk=256)
    with torch.inference_mode():
        prefill(lm.module, prompts, cache, lm.backend, lm.kv, chunk=256)
    for i, p in enumerate(prompts):
        want_b = pyramid_budgets(len(p), 0.5, 8, 4, LAYERS)
        assert cache.kept[:, i].tolist() == want_b
        att, keys = hf_run(hf, p)
        for layer in range(LAYERS):
            ref = reference_scores("pyramidkv", {"window": 8, "kernel": 5}, att[layer], keys[layer], len(p), 0)
            assert kept_sets(cache, layer, i) == [top(ref[h], want_b[layer]) for h in range(HKV)]
    # each layer's pool holds that layer's regions only (with a prefill chunk smaller than the prompts, so the
    # region is the budget plus one chunk): the storage falls layer by layer, as the budgets do
    cache = new_cache(lm.module, prompts, 1, lm.kv, chunk=16)
    per_layer = [cache.k[l].untyped_storage().nbytes() for l in range(LAYERS)]
    assert per_layer == sorted(per_layer, reverse=True) and per_layer[0] > 1.5 * per_layer[-1]
    slots = [sum(c) for c in capacities(lm.kv, list(lens), 1, 16, LAYERS)]
    assert per_layer == [s * HKV * lm.config.head_dim * 8 for s in slots]


@pytest.mark.parametrize("name,factor", [("h2o", 1.0), ("a2sf", 0.8)])
def test_accumulated_scores_equal_hf_column_sums_across_chunks_and_decode(models, name, factor):
    """A budget that evicts nothing, so the attention is the full model's: the running scores after a chunked
    prefill (chunk 8) and 5 decode steps equal HF's column sums over every query, decayed per token."""
    hf, folder = models
    opts = "tokens=400" + (f",factor={factor}" if name == "a2sf" else "")
    lm = lw.load(folder, device="cpu", dtype="float64", backend="reference", kv=f"{name}:{opts},every=1")
    prompts = prompts_of(1, (29, 6, 17))
    feed = [torch.randint(0, 211, (5,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(3)]
    cache = new_cache(lm.module, prompts, 6, lm.kv, chunk=8)
    seqs = torch.arange(3)
    with torch.inference_mode():
        prefill(lm.module, prompts, cache, lm.backend, lm.kv, chunk=8)
        for t in range(5):
            decode_step(lm.module, cache, torch.tensor([f[t] for f in feed]), seqs, lm.backend, lm.kv, evict=True)
    for i, (p, f) in enumerate(zip(prompts, feed)):
        ids = p + f
        n = len(ids)
        att, _ = hf_run(hf, ids)
        wt = factor ** torch.arange(n - 1, -1, -1, dtype=torch.float64)
        for layer in range(LAYERS):
            ref = group_mean((att[layer] * wt[None, :, None]).sum(1)).T  # [n, Hkv]
            a = int(cache.start_l[layer, i])
            assert int(cache.kept[layer, i]) == n
            assert rel_err(cache.acc[layer][a:a + n].double(), ref) <= 1e-5, (i, layer)


def test_decode_eviction_keeps_a_fixed_budget(models):
    """TOVA as in its paper: a fixed token budget, one eviction per decode step, scored by the newest query."""
    hf, folder = models
    lm = lw.load(folder, device="cpu", dtype="float64", backend="reference", kv="tova:tokens=10,every=1")
    prompts = prompts_of(2, (25, 7, 16))
    got = lm.generate_ids(prompts, max_new_tokens=8)
    cache = new_cache(lm.module, prompts, 8, lm.kv)
    # one decode step after a prefill that evicted: the new token attends to the 10 kept by the reference
    m = lm.module
    with torch.inference_mode():
        cache = new_cache(m, prompts[:1], 2, lm.kv)
        prefill(m, prompts[:1], cache, lm.backend, lm.kv)
        att, _ = hf_run(hf, prompts[0])
        kept = top(att[0][:, -1, :].mean(0), 10)
        assert kept_sets(cache, 0, 0) == [kept, kept]  # TOVA: all heads keep the same tokens
        decode_step(m, cache, torch.tensor([got[0][0]]), torch.arange(1), lm.backend, lm.kv, evict=True)
        assert cache.kept[:, 0].tolist() == [10] * LAYERS


def test_packed_equals_per_sequence_with_chunked_prefill(models):
    _, folder = models
    for spec in ("snapkv:ratio=0.5,window=4", "h2o:ratio=0.6", "pyramidkv:ratio=0.5,window=4,beta=2"):
        lm = lw.load(folder, device="cpu", dtype="float64", kv=spec)  # cpu_flash
        prompts = prompts_of(3, (37, 4, 26, 15))
        packed = lm.generate_ids(prompts, max_new_tokens=6)
        m = lm.module
        with torch.inference_mode():
            both = new_cache(m, prompts, 1, lm.kv, chunk=8)
            lp = prefill(m, prompts, both, lm.backend, lm.kv, chunk=8)
            for i, p in enumerate(prompts):
                alone = new_cache(m, [p], 1, lm.kv, chunk=8)
                la = prefill(m, [p], alone, lm.backend, lm.kv, chunk=8)
                assert rel_err(lp[i], la[0]) <= 1e-9, (spec, i)
                for layer in range(LAYERS):
                    assert kept_sets(both, layer, i) == kept_sets(alone, layer, 0), (spec, i, layer)
            assert lm.generate_ids([prompts[1]], max_new_tokens=6)[0] == packed[1]


def test_the_question_stays_out_of_compression(models):
    """context=[c]: SnapKV compresses the first c tokens with the context's last queries as its window (kvpress's
    question-agnostic protocol); every token after c is kept, and the budget counts the context only."""
    hf, folder = models
    lm = lw.load(folder, device="cpu", dtype="float64", backend="reference", kv="snapkv:ratio=0.5,window=4")
    prompts = prompts_of(4, (40, 22))
    context = [31, 15]
    cache = new_cache(lm.module, prompts, 3, lm.kv, chunk=64, context=context)
    with torch.inference_mode():
        prefill(lm.module, prompts, cache, lm.backend, lm.kv, chunk=64)
    for i, (p, c) in enumerate(zip(prompts, context)):
        budget = c // 2
        att, keys = hf_run(hf, p[:c])  # the context alone: what the compression may see
        for layer in range(LAYERS):
            ref = reference_scores("snapkv", {"window": 4, "kernel": 5}, att[layer], keys[layer], c, budget)
            want = [top(ref[h], budget) | set(range(c, len(p))) for h in range(HKV)]
            assert kept_sets(cache, layer, i) == want
    # the user's path: generate_ids(context=...) gives the same first token as this prefill's logits
    got = lm.generate_ids(prompts, max_new_tokens=1, context=context)
    with torch.inference_mode():
        c2 = new_cache(lm.module, prompts, 1, lm.kv, context=context)
        ref = prefill(lm.module, prompts, c2, lm.backend, lm.kv).argmax(-1).tolist()
    assert [g[0] for g in got] == ref


def test_full_is_the_cache_without_a_policy(models):
    _, folder = models
    prompts = prompts_of(6)
    a = lw.load(folder, device="cpu", dtype="float32").generate_ids(prompts, max_new_tokens=5)
    b = lw.load(folder, device="cpu", dtype="float32", kv="full").generate_ids(prompts, max_new_tokens=5)
    assert a == b
    for spec in ("snapkv:ratio=0", "h2o:ratio=0", "streaming:ratio=0"):  # nothing removed: the full cache exactly
        lm = lw.load(folder, device="cpu", dtype="float32", kv=spec)
        assert not lm.kv.evicts and lm.kv.spec().startswith(spec)
        assert lm.generate_ids(prompts, max_new_tokens=5) == a, spec


def test_cache_bytes_fall_with_the_ratio(models):
    _, folder = models
    prompts = [[1] * 300, [2] * 180]
    sizes = []
    for spec in ("full", "snapkv:ratio=0.25", "snapkv:ratio=0.5", "snapkv:ratio=0.875"):
        lm = lw.load(folder, device="cpu", kv=spec)
        sizes.append(new_cache(lm.module, prompts, 16, lm.kv, chunk=32).nbytes)
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4


@pytest.mark.parametrize("bad,needle", [
    ("snapkv", "exactly one budget"), ("snapkv:ratio=1", "ratio must be in"), ("h2o:ratio=-0.1", "ratio must be in"),
    ("tova:ratio=0.5,tokens=3", "exactly one budget"), ("streaming:tokens=4", "must pass them"),
    ("snapkv:ratio=0.5,kernel=4", "odd number"), ("pyramidkv:ratio=0.5,beta=0.5", "beta must be >= 1"),
    ("a2sf:ratio=0.5,factor=0", "forgetting factor"), ("h2o:ratio=0.5,recent=1", "share of the budget"),
    ("snapkv:ratio=0.5,windw=3", "no option 'windw'"), ("snapkv2:ratio=0.5", "unknown KV policy"),
    ("snapkv:tokens=10", "below its observation window"), ("pyramidkv:tokens=8,window=16", "below its observation"),
    ("adakv:tokens=10", "below its observation window"), ("tova:tokens=0", r"N >= 1; ratio=0 is the full cache"),
    ("tova:tokens=-1", r"tokens \(the count kept\) must be >= 1, got -1"),
    ("full:ratio=0.5", "'full' keeps every token and takes no options"), ("full:every=4", "takes no options"),
    # -1 and 0 are the fields' "not given" defaults: written out, they are checked as written
    ("tova:ratio=-1,tokens=10", r"ratio must be in \[0, 1\) \(the fraction removed\), got -1"),
    ("snapkv:ratio=-1", "ratio must be in"), ("snapkv:tokens=0", "must be >= 1, got 0"),
    ("snapkv:ratio=-1+think:ratio=0.25", "snapkv: ratio must be in")])
def test_bad_specs_get_one_line(bad, needle):
    with pytest.raises(lw.LengthwiseError, match=needle):
        kv.parse(bad)


def test_bad_context_is_refused(models):
    _, folder = models
    lm = lw.load(folder, device="cpu", kv="snapkv:ratio=0.5")
    for ctx in ([0, 3], [5], [3, 99]):
        with pytest.raises(lw.LengthwiseError, match="where its context ends"):
            lm.generate_ids([[1] * 10, [2] * 8], max_new_tokens=2, context=ctx)


def test_eval_records_kv_and_the_measured_bytes_and_report_keeps_them_apart(tmp_path, smol_path):
    """The harness through lw.evaluate: records carry the policy and the cache bytes the engine measured (its
    storage in decode, and in prefill); the bytes fall with the ratio; report gives each policy its own rows."""
    from conftest import tiny_smol_llama
    folder = tmp_path / "tiny"
    tiny_smol_llama(folder, smol_path)
    got = {}
    for spec in ("full", "snapkv:ratio=0.5", "streaming:ratio=0.75"):
        recs = lw.evaluate(str(folder), ["niah_single"], [600], tmp_path / "kv.jsonl", depths=2, samples=1,
                           device="cpu", kv=spec, append_config=True)
        assert len(recs) == 2 and all(r["kv"] == kv.parse(spec).spec() for r in recs)
        assert all(r["kv_bytes"] > 0 and r["kv_bytes_prefill"] >= r["kv_bytes"] for r in recs)
        got[spec] = recs[0]["kv_bytes"]
    assert got["full"] > got["snapkv:ratio=0.5"] > got["streaming:ratio=0.75"]
    # the question stays out by default; "compressed" is another config, keyed apart
    assert recs[0]["config"]["kv_question"] == "kept"
    rows = lw.report([tmp_path / "kv.jsonl"])
    text = json.dumps(rows, default=str)
    for spec in ("snapkv:ratio=0.5", "streaming:ratio=0.75,sinks=4"):
        assert spec in text
    # each policy's block shows the cache it held, as measured: the records' mean kv_bytes in MiB
    table = lw.report.format_table(rows["table"])
    shown = [float(line.split()[-1]) for line in table.splitlines() if line.startswith("KV MiB/seq")]
    assert len(shown) == 3 and "KV MiB/seq" in rows["markdown"]
    assert sorted(shown, reverse=True) == pytest.approx([b / 2**20 for b in sorted(got.values(), reverse=True)], rel=0.1)


def test_cli_refuses_a_bad_kv_spec_in_one_line(tmp_path):
    from typer.testing import CliRunner
    from lengthwise import cli
    src = tmp_path / "p.txt"
    src.write_text("hello\n")
    for args in (["generate", str(src), "--model", "smollm2-135m", "--kv", "snapkv:ratio=2"],
                 ["eval", "--model", "smollm2-135m", "--output", str(tmp_path / "o.jsonl"), "--kv", "nope"],
                 ["eval", "--model", "smollm2-135m", "--output", str(tmp_path / "o.jsonl"), "--kv-question",
                  "compressed"]):
        r = CliRunner().invoke(cli.app, args)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert "Traceback" not in r.output
    assert "add --kv POLICY" in r.output and not (tmp_path / "o.jsonl").exists()
    r = CliRunner().invoke(cli.app, ["eval", "--output", str(tmp_path / "o.jsonl"), "--kv-question", "maybe"])
    assert r.exit_code == 2 and "--kv-question must be kept or compressed, got 'maybe'" in r.output


def hf_kept_logits(hf, ids, context, kept):
    """HF's own model on ids, each layer's attention masked as a compressed cache would leave it: a query past
    the context sees, of the context, only the tokens its kv head kept in that layer (kept [L][Hkv] sets of
    positions); everything else is causal as usual. -> logits [n, V] float64. The mask goes in through HF's
    attention registry, around HF's eager attention."""
    from transformers import AttentionInterface
    from transformers.models.llama.modeling_llama import eager_attention_forward
    n = len(ids)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    masks = []
    for layer_sets in kept:
        rows = []
        for h in range(H):
            keep = torch.zeros(n, dtype=torch.bool)
            keep[list(layer_sets[h // (H // HKV)])] = True
            ok = (j <= i) & ((i < context) | (j >= context) | keep[None, :])
            rows.append(torch.where(ok, 0.0, -torch.inf).double())
        masks.append(torch.stack(rows)[None])  # [1, H, n, n]

    def masked(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        return eager_attention_forward(module, query, key, value, masks[module.layer_idx], scaling, dropout, **kw)

    AttentionInterface.register("lengthwise_test_kept", masked)
    before = hf.config._attn_implementation
    hf.set_attn_implementation("lengthwise_test_kept")
    try:
        with torch.no_grad():
            return hf(torch.tensor([ids])).logits[0].double()
    finally:
        hf.set_attn_implementation(before)


@pytest.mark.parametrize("spec", ["snapkv:ratio=0.5,window=4", "knorm:ratio=0.6",
                                  "pyramidkv:ratio=0.5,window=4,beta=2", "h2o:ratio=0.5"])
def test_attention_over_the_compressed_cache_equals_hf_masked(models, spec):
    """Independent of how the cache compacts: after a policy compressed each context (kv heads keeping
    different tokens, layers different counts), the question's and every decode step's logits equal HF's model
    with the dropped context tokens masked out per layer and head. Decode runs both ways the engine plans it:
    eagerly (cache.plan) and as the CUDA graph does (plan_decode_all, no host sync)."""
    from lengthwise.attention.layer import Step
    hf, folder = models
    lm = lw.load(folder, device="cpu", dtype="float64", kv=spec)  # cpu_flash
    m = lm.module
    prompts = prompts_of(7, (38, 27))
    context = [30, 19]
    feed = [[5, 17, 3], [11, 2, 40]]  # forced decode tokens
    for plan in ("eager", "graph"):
        cache = new_cache(m, prompts, len(feed[0]) + 1, lm.kv, chunk=64, context=context)
        steps = []
        with torch.inference_mode():
            steps.append(prefill(m, prompts, cache, lm.backend, lm.kv, chunk=64))
            kept = [[kept_sets(cache, layer, i) for layer in range(LAYERS)] for i in range(2)]
            for t in range(len(feed[0])):
                tok = torch.tensor([f[t] for f in feed])
                if plan == "eager":
                    steps.append(decode_step(m, cache, tok, torch.arange(2), lm.backend, lm.kv))
                else:
                    slots, positions, meta = cache.plan_decode_all()
                    steps.append(m(tok, positions, Step(meta, m.mask, lm.backend, cache, slots)))
        for i, (p, c) in enumerate(zip(prompts, context)):
            assert all(len(s) < c for layer in kept[i] for s in [x - set(range(c, len(p))) for x in layer])
            ref = hf_kept_logits(hf, p + feed[i], c, kept[i])
            for t, got in enumerate(steps):
                assert rel_err(got[i], ref[len(p) - 1 + t]) <= 1e-6, (spec, plan, i, t)  # HF: float32 RoPE tables


def test_pyramidkv_chunked_prefill_fits_budgets_that_shrink_with_length(models):
    """PyramidKV's pyramid forms only past a length, so a layer's budget for a chunk's tokens seen so far can
    exceed its final one: the regions are sized to the largest, and a long chunked prompt runs (H200: 32k prompts
    once overflowed here)."""
    _, folder = models
    lm = lw.load(folder, device="cpu", dtype="float64", kv="pyramidkv:ratio=0.875,window=4,beta=2")
    prompts = prompts_of(8, (200, 64, 131))
    caps = capacities(lm.kv, [len(p) for p in prompts], 3, 16, LAYERS)
    with torch.inference_mode():
        cache = new_cache(lm.module, prompts, 3, lm.kv, chunk=16)
        prefill(lm.module, prompts, cache, lm.backend, lm.kv, chunk=16)  # raised "region overflow" before
    final = lm.kv.layer_keep(torch.tensor([len(p) for p in prompts]), LAYERS)
    assert cache.kept.tolist() == final.tolist()
    assert all(c >= k for row, krow in zip(caps, final.tolist()) for c, k in zip(row, krow))


def _hash31(x: int) -> int:
    """kv/random.py's documented draw in plain Python integers: xor-shift-multiply twice, then a last xor-shift."""
    M = 2 ** 31 - 1
    for _ in range(2):
        x ^= x >> 16
        x = (x * 0x45D9F3B) & M
    return x ^ (x >> 16)


def test_random_keeps_the_top_of_its_documented_hash_uniformly(models):
    """random: each (layer, kv head) keeps the budget's best by hash(seed, layer, head, position), computed here in
    plain Python; a different seed keeps other tokens; over many positions the draw is uniform."""
    _, folder = models
    lm = lw.load(folder, device="cpu", dtype="float64", kv="random:tokens=12,seed=3")
    prompts = prompts_of(0)
    cache = new_cache(lm.module, prompts, 4, lm.kv, chunk=64)
    with torch.inference_mode():
        prefill(lm.module, prompts, cache, lm.backend, lm.kv, chunk=64)
    M = 2 ** 31 - 1

    def score(layer, head, pos):
        h = _hash31((3 * 1_000_003 + 12_345) & M)
        return _hash31(_hash31(_hash31(h ^ layer) ^ head) ^ pos) / M

    for i, p in enumerate(prompts):
        n, budget = len(p), min(12, len(p))
        for layer in range(LAYERS):
            want = [set(sorted(range(n), key=lambda x: (-score(layer, h, x), x))[:budget]) for h in range(HKV)]
            assert kept_sets(cache, layer, i) == want, (i, layer)
    other = kv.parse("random:tokens=12,seed=4")
    c2 = new_cache(lm.module, prompts, 4, other, chunk=64)
    with torch.inference_mode():
        prefill(lm.module, prompts, c2, lm.backend, other, chunk=64)
    assert kept_sets(c2, 0, 0) != kept_sets(cache, 0, 0)
    draws = torch.tensor([score(1, 0, x) for x in range(20000)], dtype=torch.float64)
    assert abs(float(draws.mean()) - 0.5) < 0.01 and abs(float(draws.std()) - 12 ** -0.5) < 0.01
    assert abs(float((draws < 0.25).double().mean()) - 0.25) < 0.015


def test_a_rope_scaling_composes_with_eviction(tmp_path):
    """Past the trained context with a RoPE scaling (the 32k grid's setting) and an evicting policy: each kept
    token keeps its position, so the question's and the decode steps' logits equal HF's model with that scaling
    in its config and the dropped context tokens masked per layer and kv head (float64)."""
    _, folder = tiny_hf_causal("llama", tmp_path, num_hidden_layers=LAYERS, max_position_embeddings=32)
    hf, _ = tiny_hf_causal("llama", tmp_path / "hf", num_hidden_layers=LAYERS, max_position_embeddings=32,
                           rope_parameters={"rope_theta": 10000.0, "rope_type": "yarn", "factor": 8.0})
    hf = hf.double()
    lm = lw.load(folder, device="cpu", dtype="float64", positions="yarn:factor=8", kv="snapkv:ratio=0.5,window=4")
    m = lm.module
    prompts = prompts_of(11, (52, 41))  # both past the trained 32
    context = [44, 33]
    feed = [[5, 17, 3], [11, 2, 40]]
    cache = new_cache(m, prompts, len(feed[0]) + 1, lm.kv, chunk=64, context=context)
    with torch.inference_mode():
        steps = [prefill(m, prompts, cache, lm.backend, lm.kv, chunk=64)]
        kept = [[kept_sets(cache, layer, i) for layer in range(LAYERS)] for i in range(2)]
        for t in range(len(feed[0])):
            steps.append(decode_step(m, cache, torch.tensor([f[t] for f in feed]), torch.arange(2), lm.backend, lm.kv))
    for i, (p, c) in enumerate(zip(prompts, context)):
        assert all(len(s - set(range(c, len(p)))) < c for s in kept[i][0])  # it did evict
        ref = hf_kept_logits(hf, p + feed[i], c, kept[i])
        for t, got in enumerate(steps):
            assert rel_err(got[i], ref[len(p) - 1 + t]) <= 1e-6, (i, t)


@pytest.mark.parametrize("spec", ["snapkv:ratio=0.5", "pyramidkv:ratio=0.75", "adakv:ratio=0.5"])
def test_a_prompt_within_the_observation_window_stays_whole(models, spec):
    """SnapKV always keeps its window, so a ratio never budgets below it: a prompt of 40 tokens (window 64)
    decodes exactly as with the full cache, and one of 100 at ratio 0.5 keeps 64, not 50 (the window whole)."""
    _, folder = models
    full = lw.load(folder, device="cpu", dtype="float64")
    lm = lw.load(folder, device="cpu", dtype="float64", kv=spec)
    short = [list(range(5, 45)), list(range(50, 70))]
    assert lm.generate_ids(short, max_new_tokens=4) == full.generate_ids(short, max_new_tokens=4)
    n = torch.tensor([100, 40, 200])
    assert lm.kv.keep(n).tolist() == [max(int(100 * (1 - lm.kv.ratio)), 64), 40, max(int(200 * (1 - lm.kv.ratio)), 64)]
