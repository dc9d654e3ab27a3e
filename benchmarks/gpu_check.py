"""GPU backend against the reference, on the GPU machine (see docs/gpu-check.md).

    LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src python benchmarks/gpu_check.py

Checks, all on mixed-length packed batches:
  1. varlen attention kernels (bf16) against the float32 reference: plain causal, bidirectional,
     sliding window, GQA, decode against a ragged cache with gaps (seqused_k), and split-KV decode
     over long ragged caches (against float32 and against the one-pass kernel), and the Triton decode
     kernel (GQA groups, head dims 64/128, windows; NaN-poisoned gaps), and the fused RoPE + cache write +
     decode step (its cache rows bit for bit against Tables.apply's), and a remap's one-pass decode kernel
     against the float32 reference and the two-pass step at 32k (timed against it too);
  2. smollm2-135m logits: the varlen backend against the reference backend, both bf16 weights
     (the backend's own error): ||diff|| / ||ref|| <= 2e-2 per sequence (max|diff| / max|ref| reported too). Reported beside it: varlen bf16
     against reference float32, and reference bf16 against reference float32 (bf16's own drift);
  3. greedy generation, varlen bf16 against reference float32 (agreement reported); CUDA-graph against
     eager decode (agreement >= 0.9); each fast path on against off (split-KV after prompts of 7900 and
     3000 tokens; the fused Triton decode step; a remap's one-pass decode; the fused add+RMSNorm and SiLU*up
     layers): logits of the same prefill and decode steps within the bound, greedy agreement reported;
  4. minilm-l6 embeddings, varlen bf16 against reference float32 (cosine per row);
  5. random Qwen2 (qkv bias) and Mistral (window 64) configs, logits as in 2;
  6. memory hygiene: load, use and delete minilm-l6 and smollm2-135m 5 times; nothing stays allocated
     (`python benchmarks/gpu_check.py memory` runs this check alone).
Writes $OUT/gpu_check.json (or benchmarks/results/) and exits non-zero if a bound fails.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lengthwise as lw  # noqa: E402
from lengthwise.attention import AttnMeta, Backend, MaskPattern, attend  # noqa: E402
from lengthwise.kv import RaggedKVCache  # noqa: E402

BOUND = 2e-2
rows, failed = [], []


def rel(a, b):
    """||a - b|| / ||b|| (Frobenius), the norm METHOD.md bounds bf16 by."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def rel_max(a, b):
    """max|a - b| / max|b|: the strictest reading, reported beside it."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def record(name, value, bound=None, higher_is_better=False):
    ok = True if bound is None else (value >= bound if higher_is_better else value <= bound)
    rows.append({"check": name, "value": value, "bound": bound, "ok": ok})
    if not ok:
        failed.append(name)
    print(f"{'ok ' if ok else 'FAIL'} {name}: {value:.3g}" + ("" if bound is None else f" (bound {bound:g})"), flush=True)


def kernels():
    g = torch.Generator(device="cuda").manual_seed(0)
    lens = [1, 7, 64, 300, 1000, 33]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    T, D = sum(lens), 64
    for H, Hkv in [(8, 8), (9, 3)]:
        q = torch.randn(T, H, D, device="cuda", generator=g)
        k, v = (torch.randn(T, Hkv, D, device="cuda", generator=g) for _ in range(2))
        for mask in [MaskPattern(True), MaskPattern(False), MaskPattern(True, window=48)]:
            meta = AttnMeta.packed(cu, max(lens))
            ref = attend(q, k, v, meta, mask, "reference")
            out = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), meta, mask, "varlen")
            record(f"kernel H={H} Hkv={Hkv} causal={mask.causal} window={mask.window}", rel(out, ref), BOUND)
    # decode against a ragged cache with unused (poisoned) gaps
    cache, meta2, q = decode_step(lens, [0, 2, 3, 5], 8, D, g)
    ref = attend(q, cache.k[0].float(), cache.v[0].float(), meta2, MaskPattern(True), "reference")
    out = attend(q.bfloat16(), cache.k[0], cache.v[0], meta2, MaskPattern(True), "varlen")
    record("kernel decode over ragged cache (seqused_k)", rel(out, ref), BOUND)
    split_kv(g, D)
    triton_decode(g)
    one_pass_remap(g)
    rope_prefill_exact(g)
    triton_prefill(g)


def decode_step(lens, active, spare, D, g):
    """One bf16 layer's ragged cache (3 kv heads) holding prompts of `lens` keys, NaN in every unused slot; the
    `active` sequences then write one new key each -> (cache, that decode step's meta, float32 queries [B, 9, D])."""
    cache = RaggedKVCache(1, [n + spare for n in lens], 3, D, torch.bfloat16, "cuda")
    cache.k.fill_(float("nan"))
    cache.v.fill_(float("nan"))
    slots, _, _ = cache.plan(torch.arange(len(lens), device="cuda"), torch.tensor(lens, device="cuda"))
    cache.k[0, slots] = torch.randn(sum(lens), 3, D, device="cuda", generator=g).bfloat16()
    cache.v[0, slots] = torch.randn(sum(lens), 3, D, device="cuda", generator=g).bfloat16()
    active = torch.tensor(list(active), device="cuda")
    slots, _, meta = cache.plan(active, torch.ones_like(active))
    cache.k[0, slots] = torch.randn(len(active), 3, D, device="cuda", generator=g).bfloat16()
    cache.v[0, slots] = torch.randn(len(active), 3, D, device="cuda", generator=g).bfloat16()
    return cache, meta, torch.randn(len(active), 9, D, device="cuda", generator=g)


def split_kv(g, D):
    """Split-KV decode (flash-decoding): long, ragged caches, one query each, bf16 against float32 and
    against the one-pass kernel."""
    lens = [1, 3000, 20000, 9000, 2049]
    cache, meta, q = decode_step(lens, range(len(lens)), 4, D, g)
    ref = attend(q, cache.k[0].float(), cache.v[0].float(), meta, MaskPattern(True), "reference")
    one = attend(q.bfloat16(), cache.k[0], cache.v[0], meta, MaskPattern(True), "varlen", splits=1)
    for S in (2, 16):
        out = attend(q.bfloat16(), cache.k[0], cache.v[0], meta, MaskPattern(True), "varlen", splits=S)
        record(f"kernel split-KV decode, {S} chunks, lens {lens}: bf16 vs fp32 reference", rel(out, ref), BOUND)
        record(f"kernel split-KV decode, {S} chunks: vs the one-pass kernel (bf16)", rel(out, one), BOUND)


def triton_decode(g):
    """The Triton decode kernel (bf16) over a ragged cache with NaN-poisoned gaps, against float32: GQA
    groups of 1, 3 and 4, head dims 64 and 128, with and without a window, and through attend()'s routing."""
    from lengthwise.attention.triton_decode import decode_attention
    lens = [0, 1, 63, 64, 65, 300, 5000]
    cap = [n + 8 for n in lens]
    cu = torch.tensor([0] + torch.tensor(cap).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    used = torch.tensor(lens, dtype=torch.int32, device="cuda")
    meta = AttnMeta(torch.arange(len(lens) + 1, dtype=torch.int32, device="cuda"), 1, cu, max(cap), used)
    for G, Hkv, D in [(1, 4, 64), (3, 3, 64), (4, 2, 128)]:
        k, v = (torch.randn(sum(cap), Hkv, D, device="cuda", generator=g) for _ in range(2))
        for i, n in enumerate(lens):  # the gaps are poison: reading one would show
            k[cu[i] + n:cu[i + 1]] = float("nan")
            v[cu[i] + n:cu[i + 1]] = float("nan")
        q = torch.randn(len(lens), G * Hkv, D, device="cuda", generator=g)
        q16, k16, v16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
        for window in (None, 48):
            mask = MaskPattern(True, window=window)
            ref, ref_lse = attend(q16.float(), k16.float(), v16.float(), meta, mask, "reference", return_lse=True)
            out, lse = decode_attention(q16, k16, v16, cu, used, D ** -0.5, window, return_lse=True)
            name = f"kernel Triton decode G={G} Hkv={Hkv} D={D} window={window}, lens {lens}"
            record(f"{name}: bf16 vs fp32 reference", rel(out, ref), BOUND)
            fin = ref_lse.isfinite()
            same_inf = torch.equal(lse.isneginf(), ref_lse.isneginf())
            record(f"{name}: lse max |diff| (inf where the reference is)",
                   (lse[fin] - ref_lse[fin]).abs().max().item() if same_inf else float("inf"), BOUND)
            if window is None:
                # the 5000 keys would split: split-KV off
                routed = attend(q16, k16, v16, meta, mask, Backend("varlen", triton_decode=True, split_kv=False))
                record(f"{name}: attend(varlen) with the flag on vs the kernel", rel(routed, out), 0.0)
    fused_step(g, lens, cap, cu, used, meta)


def fused_step(g, lens, cap, cu, used, meta):
    """The fused RoPE + cache write + attention step (rope_cache_decode) in bf16: the cache rows it writes
    against Tables.apply's (bit for bit), its output against float32 attention over those rows."""
    from lengthwise.attention.triton_decode import rope_cache_decode
    from lengthwise.positions import Tables
    has_new = used > 0  # sequences with no key have no new token: give each a used count of at least 1
    used1 = torch.where(has_new, used, torch.ones_like(used))
    meta1 = AttnMeta(meta.cu_q, 1, cu, meta.max_k, used1)
    slots = (cu[:-1] + used1 - 1).long()
    for G, Hkv, D in [(3, 3, 64), (4, 2, 128)]:
        k, v = (torch.randn(sum(cap), Hkv, D, device="cuda", generator=g).bfloat16() for _ in range(2))
        qkv = torch.randn(len(lens), (G + 2) * Hkv, D, device="cuda", generator=g).bfloat16()
        pos = torch.randint(0, 100000, (len(lens),), device="cuda", generator=g).double()
        ang = pos[:, None] * 10000.0 ** (-torch.arange(0, D, 2, device="cuda").double() / D)
        ang = torch.cat([ang, ang], -1)
        tables = Tables.of(ang.cos().float(), ang.sin().float(), torch.bfloat16)
        for window in (None, 48):
            k2, v2 = k.clone(), v.clone()
            out = rope_cache_decode(qkv, tables, k2, v2, slots, cu, used1, D ** -0.5, window)
            qk = tables.apply(qkv[:, :(G + 1) * Hkv])
            name = f"kernel fused RoPE + cache write + decode G={G} Hkv={Hkv} D={D} window={window}"
            record(f"{name}: values in the cache differ from the step's", float(not torch.equal(
                v2[slots], qkv[:, (G + 1) * Hkv:])), 0.0)
            diff = (k2[slots].float() - qk[:, G * Hkv:].float()).abs()
            record(f"{name}: rotated keys, share of elements that differ from Tables.apply's",
                   (diff > 0).float().mean().item())
            record(f"{name}: rotated keys, max |diff| / max |Tables.apply| (bit for bit: 0)",
                   rel_max(k2[slots], qk[:, G * Hkv:]), 0.0)
            ref = attend(qk[:, :G * Hkv].float(), k2.float(), v2.float(), meta1, MaskPattern(True, window=window),
                         "reference")
            record(f"{name}: bf16 vs fp32 reference", rel(out, ref), BOUND)


def gpu_ms(fn, n: int = 20, rounds: int = 5) -> float:
    """ms per call of fn: the median over rounds of a CUDA graph of n back-to-back calls, replayed (no launch
    overhead, as in the decode graph), after warm-up calls on a side stream."""
    import statistics
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n):
            fn()
    ts = []
    for _ in range(rounds):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        graph.replay()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) / n)
    return statistics.median(ts)


def one_pass_remap(g):
    """A remap's decode step in one pass (triton_two_region.two_region_decode, bf16) against attend_two_region:
    the float32 reference and the two-pass varlen step (near pass, far pass, merge). SmolLM2's heads (9 query, 3
    kv, D 64); far keys the cache's k itself (STRING) or a pool of their own (distance_cap, SelfExtend). Ragged
    lengths around 32k with NaN-poisoned gaps, then 4 x 32768 keys timed, one-pass against two-pass."""
    from lengthwise.attention.triton_two_region import two_region_decode
    from lengthwise.attention.two_region import attend_two_region
    from lengthwise.positions.rope import Far
    H, Hkv, D, gap = 9, 3, 64, 8
    two = Backend("varlen", one_pass_remap=False)
    for lens, timed in (([32768, 30001, 2100, 1000, 1], False), ([32768] * 4, True)):
        B, cap = len(lens), [n + gap for n in lens]
        cu = torch.tensor([0] + torch.tensor(cap).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
        used = torch.tensor(lens, dtype=torch.int32, device="cuda")
        meta = AttnMeta(torch.arange(B + 1, dtype=torch.int32, device="cuda"), 1, cu, max(cap), used)
        k, v, k_far = (torch.randn(sum(cap), Hkv, D, device="cuda", generator=g).bfloat16() for _ in range(3))
        for i, n in enumerate(lens):
            for t in (k, v, k_far):
                t[cu[i] + n:cu[i + 1]] = float("nan")
        q, qf = (torch.randn(B, H, D, device="cuda", generator=g).bfloat16() for _ in range(2))
        for case, W, kf in (("kf is k (STRING-like), W=2048", 2048, k), ("kf apart (SelfExtend-like), W=1024", 1024, k_far)):
            far = Far(None, None, None, None, used.long() - 1, W, None)
            name = f"kernel one-pass remap decode, {case}, lens {lens if not timed else f'{B} x 32768'}"
            one = two_region_decode(q, qf, k, v, kf, cu, used, W, D ** -0.5, meta.max_k)
            passes = attend_two_region(q, k, v, qf, kf, meta, MaskPattern(True), far, two, D ** -0.5)
            if not timed:
                ref = attend_two_region(q.float(), k.float(), v.float(), qf.float(), kf.float(), meta,
                                        MaskPattern(True), far, "reference", D ** -0.5)
                record(f"{name}: bf16 vs fp32 reference", rel(one, ref), BOUND)
                record(f"{name}: NaN in the output (a poisoned gap was read)", float(one.isnan().any()), 0.0)
            record(f"{name}: vs the two-pass step (bf16)", rel(one, passes), BOUND)
            if timed:
                t1 = gpu_ms(lambda: two_region_decode(q, qf, k, v, kf, cu, used, W, D ** -0.5, meta.max_k))
                t2 = gpu_ms(lambda: attend_two_region(q, k, v, qf, kf, meta, MaskPattern(True), far, two, D ** -0.5))
                record(f"{name}: one-pass ms per layer", t1)
                record(f"{name}: two-pass ms per layer", t2)
                record(f"{name}: speed-up, two-pass / one-pass", t2 / t1)


def remap_generation(fast):
    """A remap's decode steps in one pass against two (Backend.one_pass_remap) inside smollm2-135m: a prompt of
    3000 tokens past the near window, short ones within it; far keys of their own (SelfExtend) and not (STRING)."""
    g = torch.Generator().manual_seed(6)
    ids = [torch.randint(10, fast.config.vocab_size, (n,), generator=g).tolist() for n in (5, 200, 3000, 17)]
    for spec in ("self_extend:group=4,window=1024", "string:shift=1000,local=128"):
        lm = lw.load("smollm2-135m", device="cuda", dtype="bfloat16", positions=spec)
        decode_pair(f"one-pass remap decode ({spec})", lm, ids, "one_pass_remap", "two-pass two-region decode")
        del lm


def triton_prefill(g):
    """The Triton prefill kernel (bf16) on packed causal batches against float32: MHA and GQA 8:1 and
    3:1, lengths across its 128-query blocks, with and without a window."""
    from lengthwise.attention.triton_prefill import prefill_attention
    lens = [1, 100, 128, 129, 3000, 8192]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    meta = AttnMeta.packed(cu, max(lens))
    T = sum(lens)
    for H, Hkv, D in [(8, 8, 64), (32, 4, 64), (9, 3, 64), (8, 2, 128)]:
        q = torch.randn(T, H, D, device="cuda", generator=g).bfloat16()
        k, v = (torch.randn(T, Hkv, D, device="cuda", generator=g).bfloat16() for _ in range(2))
        for window in (None, 48):
            ref = attend(q.float(), k.float(), v.float(), meta, MaskPattern(True, window=window), "reference")
            out = prefill_attention(q, k, v, cu, D ** -0.5, window)
            record(f"kernel Triton prefill H={H} Hkv={Hkv} D={D} window={window}, lens {lens}: bf16 vs fp32 "
                   "reference", rel(out, ref), BOUND)


def rope_prefill_exact(g):
    """The fused prefill RoPE (rope_prefill) against Tables.apply, bit for bit, in bf16 and fp16, with the
    cache writes."""
    from lengthwise.attention.triton_decode import rope_prefill
    from lengthwise.positions import Tables
    T, H, Hkv, D = 3000, 9, 3, 64
    for dtype in (torch.bfloat16, torch.float16):
        qkv = torch.randn(T, H + 2 * Hkv, D, device="cuda", generator=g).to(dtype)
        pos = torch.randint(0, 100000, (T,), device="cuda", generator=g).double()
        ang = pos[:, None] * 10000.0 ** (-torch.arange(0, D, 2, device="cuda").double() / D)
        tables = Tables.of(torch.cat([ang, ang], -1).cos().float(), torch.cat([ang, ang], -1).sin().float(), dtype)
        k = torch.full((T + 10, Hkv, D), float("nan"), dtype=dtype, device="cuda")
        v = k.clone()
        slots = torch.randperm(T + 10, device="cuda", generator=g)[:T]
        got = rope_prefill(qkv, tables, Hkv, k, v, slots)
        want = tables.apply(qkv[:, :H + Hkv])
        exact = (torch.equal(got, want) and torch.equal(k[slots], want[:, H:])
                 and torch.equal(v[slots], qkv[:, H + Hkv:]))
        record(f"kernel fused prefill RoPE + cache write, {dtype}: differs from Tables.apply (bit for bit)",
               float(not exact), 0.0)


def fast_launch(g):
    """attention/launch.py: a kernel launched through its own table (the second call of a key) writes the
    same bits as Triton's own launch (the first), for each kernel the engine launches; and the host time
    of one launch either way (reported, no bound)."""
    import time
    from lengthwise.attention import launch as L
    from lengthwise.attention.triton_decode import decode_attention, rope_prefill
    from lengthwise.attention.triton_fused import add_rms_norm, silu_mul
    from lengthwise.positions import Tables
    T, H, Hkv, D, dim = 777, 9, 3, 64, 576
    qkv = torch.randn(T, H + 2 * Hkv, D, device="cuda", generator=g).to(torch.bfloat16)
    ang = torch.arange(T, device="cuda").double()[:, None] * 10000.0 ** (
        -torch.arange(0, D, 2, device="cuda").double() / D)
    tables = Tables.of(torch.cat([ang, ang], -1).cos().float(), torch.cat([ang, ang], -1).sin().float(), torch.bfloat16)
    x = torch.randn(T, dim, device="cuda", generator=g)
    y, w = torch.randn_like(x), torch.randn(dim, device="cuda", generator=g)
    gu = torch.randn(T, 2 * 1536, device="cuda", generator=g).to(torch.bfloat16)
    q = torch.randn(8, H, D, device="cuda", generator=g).to(torch.bfloat16)
    kc = torch.randn(8 * 300, Hkv, D, device="cuda", generator=g).to(torch.bfloat16)
    cu = torch.arange(0, 8 * 300 + 1, 300, device="cuda", dtype=torch.int32)
    used = torch.full((8,), 257, device="cuda", dtype=torch.int32)
    calls = {"rope_prefill": lambda: rope_prefill(qkv, tables, Hkv),
             "add_rms_norm": lambda: add_rms_norm(x, y, w, 1e-5, torch.bfloat16)[1],
             "silu_mul": lambda: silu_mul(gu),
             "decode_attention": lambda: decode_attention(q, kc, kc, cu, used, D ** -0.5)}
    L._TABLE.clear()
    for name, f in calls.items():
        n0 = len(L._TABLE)
        first = f().clone()  # Triton's own launch, which fills the table
        added = len(L._TABLE) > n0
        second = f()  # the table's
        record(f"fast launch {name}: table launch differs from Triton's own (bit for bit), or no table entry",
               float(not (added and torch.equal(first, second))), 0.0)
    torch.cuda.synchronize()
    for name, f in calls.items():
        for label, table in (("table", True), ("triton", False)):
            keep = dict(L._TABLE)
            n, t = 200, time.perf_counter()
            for _ in range(n):
                if not table:
                    L._TABLE.clear()
                f()
            host = (time.perf_counter() - t) / n * 1e6
            torch.cuda.synchronize()
            L._TABLE.update(keep)
            record(f"fast launch {name}: host us per call through {label} (incl. the wrapper's own work)", host)


def decode_logits(fast, ids, backend, steps: int = 4):
    """Logits of a packed prefill into a ragged cache and of `steps` teacher-forced decode steps after it (the
    same fed tokens every time), on that Backend."""
    from lengthwise.models.llama import Step
    from lengthwise.ragged import RaggedBatch
    m, cfg = fast.module, fast.config
    cache = RaggedKVCache(cfg.n_layers, [len(s) + steps for s in ids], cfg.n_kv_heads, cfg.head_dim,
                          torch.bfloat16, "cuda", far_keys=m.rotary.far_keys)
    batch = RaggedBatch.from_lists(ids, "cuda")
    out = []
    with torch.inference_mode():
        slots, positions, meta = cache.plan(torch.arange(len(ids), device="cuda"), batch.cu_seqlens.diff().long())
        out.append(m(batch.tokens, positions, Step(meta, m.mask, backend, cache, slots),
                     out_rows=batch.last_index).float())
        fed = torch.tensor([s[0] for s in ids], device="cuda")
        for _ in range(steps):
            slots, positions, meta = cache.plan_decode_all()
            out.append(m(fed, positions, Step(meta, m.mask, backend, cache, slots)).float())
    return torch.stack(out)


def decode_pair(name, fast, ids, switch, baseline):
    """A decode path (the Backend switch) on against off: logits of the same steps within the bound (the check),
    and greedy-token agreement over 32 tokens (reported; one argmax flip between near-ties diverges the rest)."""
    from lengthwise.generate import generate_ids

    def backend(on):
        return dataclasses.replace(fast.backend, **{switch: on})

    def run(on):
        return generate_ids(fast.module, ids, 32, set(), backend=backend(on), cuda_graph=True)
    off = decode_logits(fast, ids, backend(False))
    on = decode_logits(fast, ids, backend(True))
    record(f"smollm2-135m prefill logits, {name} vs {baseline}", rel(on[0], off[0]), BOUND)
    record(f"smollm2-135m decode-step logits, {name} vs {baseline}", rel(on[1:], off[1:]), BOUND)
    a, b = run(False), run(True)
    same = sum(x == y for p, q in zip(a, b) for x, y in zip(p, q)) / sum(len(p) for p in a)
    record(f"smollm2-135m greedy 32 tokens, {name} vs {baseline}: token agreement", same)


def triton_decode_generation(fast):
    """The fused Triton decode step on and off, short and long prompts in one batch."""
    g = torch.Generator().manual_seed(2)
    ids = [torch.randint(10, fast.config.vocab_size, (n,), generator=g).tolist() for n in (5, 200, 3000, 17)]
    decode_pair("fused Triton decode step", fast, ids, "triton_decode", "FlashAttention decode")


def fused_layers_generation(fast):
    """The fused residual add + RMSNorm and SiLU * up kernels (attention/triton_fused.py) on and off."""
    g = torch.Generator().manual_seed(3)
    ids = [torch.randint(10, fast.config.vocab_size, (n,), generator=g).tolist() for n in (5, 200, 3000, 17)]
    decode_pair("fused layers (add+RMSNorm, SiLU*up; prefill RoPE + cache write)", fast, ids, "fused",
                "plain torch layers")


def triton_prefill_logits(fast):
    """smollm2-135m logits of a packed batch with the Triton prefill kernel on (every pack) against off."""
    g = torch.Generator().manual_seed(4)
    ids = [torch.randint(10, fast.config.vocab_size, (n,), generator=g).tolist() for n in (5, 200, 3000, 129)]
    b0 = fast.backend
    try:
        fast.backend = dataclasses.replace(b0, triton_prefill=False)
        off = fast.logits(ids)
        fast.backend = dataclasses.replace(b0, triton_prefill=True, triton_prefill_min=0)
        on = fast.logits(ids)
    finally:
        fast.backend = b0
    record("smollm2-135m logits, Triton prefill kernel vs FlashAttention-2 prefill",
           max(rel(a, b) for a, b in zip(on, off)), BOUND)


def split_kv_generation(fast):
    """Split-KV on and off for two long prompts within the trained context (7900 keys: 2 chunks each)."""
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(10, fast.config.vocab_size, (n,), generator=g).tolist() for n in (7900, 3000)]
    decode_pair("split-KV decode", fast, ids, "split_kv", "one-pass decode (the fused Triton step)")


def causal_model(name, lens=(1, 7, 64, 300, 1000)):
    fast = lw.load(name, device="cuda", dtype="bfloat16", backend="varlen")
    ref16 = lw.load(name, device="cuda", dtype="bfloat16", backend="reference")
    ref = lw.load(name, device="cuda", dtype="float32", backend="reference")
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, fast.config.vocab_size, (n,), generator=g).tolist() for n in lens]
    lf, l16, l32 = fast.logits(seqs), ref16.logits(seqs), ref.logits(seqs)
    short = Path(str(name)).name
    record(f"{short} logits, bf16: varlen vs reference backend, lens {list(lens)}",
           max(rel(a, b) for a, b in zip(lf, l16)), BOUND)
    record(f"{short} logits, bf16: varlen vs reference backend, max-norm reading",
           max(rel_max(a, b) for a, b in zip(lf, l16)))
    record(f"{short} logits, varlen bf16 vs reference fp32", max(rel(a, b) for a, b in zip(lf, l32)))
    record(f"{short} logits, reference bf16 vs reference fp32 (bf16's own drift)", max(rel(a, b) for a, b in zip(l16, l32)))
    return fast, ref


def encoder_fast_paths(texts):
    """The encoder's GPU-only choices against the float32 reference, on minilm-l6 and a random bert-base:
    cuBLASLt's GELU epilogue (tanh form) for erf-GELU models, and residual="model" (a bf16 stream)."""
    import tempfile
    import transformers
    from lengthwise.models.load import EMBEDDED, locate_embedded
    x = torch.randn(4096, 768, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3072, 768, device="cuda", dtype=torch.bfloat16) / 768 ** 0.5
    bias = torch.randn(3072, device="cuda", dtype=torch.bfloat16)
    exact = torch.nn.functional.gelu(x.double() @ w.double().T + bias.double())
    record("GELU epilogue (cuBLASLt, tanh form) vs float64 erf GELU", rel(torch._addmm_activation(bias, x, w.T, use_gelu=True), exact), BOUND)
    record("unfused bf16 GELU vs float64 erf GELU (bf16's own drift)", rel(torch.nn.functional.gelu(x @ w.T + bias), exact))
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False).save_pretrained(f"{d}/bert-base")
        for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(locate_embedded(EMBEDDED["minilm-l6"]) / f, f"{d}/bert-base/{f}")
        long = texts + ["words " * n for n in (7, 60, 200, 500)]
        for name in ("minilm-l6", f"{d}/bert-base"):
            ref = torch.tensor(lw.load(name, device="cuda", dtype="float32", backend="reference").embed(long, truncate=True))
            short = Path(name).name
            for residual in ("float32", "model"):
                for epi in (False, True):
                    b = dataclasses.replace(Backend.resolve("auto", torch.device("cuda"), torch.bfloat16), gelu_epilogue=epi)
                    e = torch.tensor(lw.load(name, device="cuda", dtype="bfloat16", residual=residual,
                                             backend=b).embed(long, truncate=True))
                    record(f"{short} embeddings bf16, residual={residual}, GELU epilogue {'on' if epi else 'off'}, vs fp32 "
                           "reference", rel(e, ref), BOUND)


def memory_hygiene(rounds: int = 5):
    """Load, use and delete each model `rounds` times (no gc.collect, no empty_cache): torch.cuda.memory_allocated
    must come back to what it was after the first round (one-time state: kernels, the default stream's cuBLAS
    workspace). The raw growth, and the bytes left with cuBLAS workspaces cleared, are reported beside it."""
    import gc

    def use(name):
        m = lw.load(name, device="cuda", dtype="bfloat16")
        if isinstance(m, lw.Encoder):
            m.encode(["a text", "another one", "long text " * 100], convert_to_tensor=True)
        else:
            m.generate_ids(["The capital of France is", "1, 2, 3,"], max_new_tokens=16)
        del m

    for name in ("minilm-l6", "smollm2-135m"):
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        use(name)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        for _ in range(rounds):
            use(name)
        torch.cuda.synchronize()
        after = torch.cuda.memory_allocated()
        record(f"{name}: GiB left allocated after {rounds} more load/use/delete rounds (no gc)", (after - base) / 2**30, 0.0)
        record(f"{name}: GiB left after the first round, over the start", (base - start) / 2**30)
        gc.collect()
        torch._C._cuda_clearCublasWorkspaces()
        record(f"{name}: GiB left over the start, gc run and cuBLAS workspaces cleared",
               (torch.cuda.memory_allocated() - start) / 2**30, 0.0)


def main():
    if sys.argv[1:] == ["memory"]:
        memory_hygiene()
        finish("gpu_check_memory.json")
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    kernels()
    fast_launch(torch.Generator("cuda").manual_seed(5))
    fast, ref = causal_model("smollm2-135m")
    prompts = ["The capital of France is", "Write a long story about a dragon who", "1, 2, 3,"]
    a = fast.generate_ids(prompts, max_new_tokens=32)
    b = ref.generate_ids(prompts, max_new_tokens=32)
    agree = sum(x == y for p, q in zip(a, b) for x, y in zip(p, q)) / sum(len(p) for p in b)
    record("smollm2-135m greedy 32 tokens, bf16 varlen vs fp32 reference: token agreement", agree)
    from lengthwise.generate import generate_ids
    ids = fast.tokenize(prompts * 3)
    g = generate_ids(fast.module, ids, 48, set(), backend="varlen", cuda_graph=True)
    e = generate_ids(fast.module, ids, 48, set(), backend="varlen", cuda_graph=False)
    same = sum(x == y for p, q in zip(g, e) for x, y in zip(p, q)) / sum(len(p) for p in e)
    record("smollm2-135m greedy 48 tokens, CUDA-graph decode vs eager decode: token agreement", same, 0.9,
           higher_is_better=True)
    split_kv_generation(fast)
    triton_decode_generation(fast)
    remap_generation(fast)
    fused_layers_generation(fast)
    triton_prefill_logits(fast)
    enc_f = lw.load("minilm-l6", device="cuda", dtype="bfloat16", backend="varlen")
    enc_r = lw.load("minilm-l6", device="cuda", dtype="float32", backend="reference")
    texts = ["hi", "a sentence of moderate length about packing", "long text " * 100]
    ef, er = torch.tensor(enc_f.embed(texts)), torch.tensor(enc_r.embed(texts))
    record("minilm-l6 embeddings bf16 varlen vs fp32 reference: min cosine",
           torch.nn.functional.cosine_similarity(ef, er).min().item(), 0.999, higher_is_better=True)
    encoder_fast_paths(texts)
    import tempfile
    import transformers
    with tempfile.TemporaryDirectory() as d:
        for kind, cfg in [("qwen2", transformers.Qwen2Config), ("mistral", transformers.MistralConfig)]:
            torch.manual_seed(0)
            c = cfg(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                    num_key_value_heads=2, max_position_embeddings=4096, sliding_window=64 if kind == "mistral" else None)
            m = getattr(transformers, f"{'Qwen2' if kind == 'qwen2' else 'Mistral'}ForCausalLM")(c)
            m.save_pretrained(f"{d}/{kind}", safe_serialization=True)
            causal_model(f"{d}/{kind}")
    memory_hygiene()
    finish("gpu_check.json")


def finish(name: str) -> None:
    """Write $OUT/name (or benchmarks/results/name) with every check, and exit non-zero if one failed."""
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": datetime.date.today().isoformat(), "bound": BOUND, "rows": rows, "failed": failed}
    out = Path(os.environ.get("OUT", "benchmarks/results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(result, indent=1))
    print("\nALL OK" if not failed else f"\nFAILED: {failed}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
