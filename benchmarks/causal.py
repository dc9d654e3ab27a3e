"""Causal prefill and generation: lengthwise against HF transformers, same run, same GPU.

    LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src python benchmarks/causal.py [--part prefill|generate|all]

Prefill. Models: smollm2-135m (real weights) and a random-init 1.1B Llama (TinyLlama's shape), bf16.
Prompts: mixes (a) lognormal and (b) bimodal (256 prompts each) and the long mix 256-8192 (48 prompts).
  hf_padded   HF forward on left-padded batches of 32 (as generate does), logits of the last token only
  hf_one      HF forward one prompt at a time, last-token logits
  lengthwise  packed token-budget forwards (64k tokens), LM head on last tokens only
Reported: prefill tokens/s, mean time-to-first-token (a prompt's first token is ready when its
batch finishes), peak memory, and for the 1B model MFU against the bf16 matmul rate measured now.

Generation: 64 prompts of mix (a), 128 new greedy tokens each (EOS ignored by both), lengthwise
(prepacked prefill + CUDA-graph decode over the ragged cache) against HF generate on a left-padded
batch of 64, with its default dynamic cache (hf_generate_padded) and with cache_implementation="static"
(hf_generate_static), with which transformers compiles the decode step itself on a GPU (its first call, the
warm-up, compiles; its tokens are checked against the dynamic cache's first; a failure is recorded in its
row). Reported: output tokens/s, each decode step against the HBM-bandwidth roofline, and lengthwise over
each HF peer (lengthwise_over_hf).

    PYTHONPATH=src python benchmarks/causal.py --smoke     (CPU, tiny random Llama: generation part only)

Before timing, lengthwise's last-token logits are checked against its reference backend on the same
bf16 weights: ||diff|| / ||ref|| <= 2e-2 over the last-token logits of 24 prompts (3e-2 for the
random-init 1B, whose near-uniform logits make the same rounding a larger share).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import (bar_plot, copy_gbps, matmul_tflops, mix, padded, peak_mem_gib, random_ids, save, switches, sync, table,
                    timed, tiny_llama)

import lengthwise as lw
from lengthwise.generate import generate_ids
from lengthwise.models.load import EMBEDDED, locate_embedded

DEV = torch.device("cuda")
BOUND = 2e-2
# Random-init weights give near-uniform logits: the same bf16 rounding is a larger share of them.
BOUND_RANDOM = 3e-2


def make_1b(workdir: Path) -> Path:
    import transformers
    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                   num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=8192,
                                   rope_theta=10000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    m.save_pretrained(workdir / "llama-1b", safe_serialization=True)
    del m
    torch.cuda.empty_cache()
    return workdir / "llama-1b"


def model_flops(cfg, lens) -> float:
    """Useful prefill FLOPs: 2 x params x tokens, causal attention (half the square), last-token head."""
    D, H, Hkv, d = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.dim
    per_layer = d * (H + 2 * Hkv) * D + H * D * d + 3 * d * cfg.hidden_dim
    total = 0.0
    for n in lens:
        total += 2 * cfg.n_layers * per_layer * n + 2 * cfg.n_layers * H * D * n * n + 2 * d * cfg.vocab_size
    return total


def hf_prefill(hf, groups, ends):
    """Each group: a left-padded batch. Records an event when each group finishes."""
    with torch.inference_mode():
        for g in groups:
            ids, mask = padded(g, left=True)
            hf(input_ids=ids.to(DEV), attention_mask=mask.to(DEV), logits_to_keep=1)
            ends.append((torch.cuda.Event(enable_timing=True), len(g)))
            ends[-1][0].record()


def ttft_run(fn):
    """Run fn(ends) once; returns (seconds, mean time-to-first-token over prompts)."""
    ends = []
    sync()
    start = torch.cuda.Event(enable_timing=True)
    start.record()
    fn(ends)
    sync()
    times = [(start.elapsed_time(e) / 1e3, k) for e, k in ends]
    return times[-1][0], sum(t * k for t, k in times) / sum(k for _, k in times)


def prefill(models, args, workdir, peak):
    import transformers
    rows = []
    for name, folder in models:
        lm = lw.load(folder, device=DEV, dtype="bfloat16")
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(folder.parent) if folder.suffix == ".gguf" else str(folder),
            **({"gguf_file": folder.name} if folder.suffix == ".gguf" else {}),
            dtype=torch.bfloat16, attn_implementation="sdpa").to(DEV).eval()
        ref = lw.load(folder, device=DEV, dtype="bfloat16", backend="reference")
        fast = lw.load(folder, device=DEV, dtype="bfloat16", compile=True) if args.compile else None
        for mix_name, n in [(m, args.n_long if m == "long" else args.n) for m in args.mixes.split(",")]:
            lens = mix(mix_name, n, seed=3)
            seqs = random_ids(lens, lm.config.vocab_size, seed=4, low=10)
            got, want = lm.next_token_logits(seqs[:24]), ref.next_token_logits(seqs[:24])
            err = ((got.float() - want.float()).norm() / want.float().norm()).item()
            bound = BOUND if name == "smollm2-135m" else BOUND_RANDOM
            assert err <= bound, f"{name} {mix_name}: packed logits off the reference by {err:.3g}"
            tokens = sum(lens)
            if fast is not None:
                try:
                    fast.next_token_logits(seqs[:24])  # compile outside the timing
                except Exception as e:  # report, keep the other rows
                    print(f"compile failed for {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    fast = None
            systems = {
                "hf_padded": lambda ends: hf_prefill(hf, [seqs[i:i + 32] for i in range(0, n, 32)], ends),
                "hf_one": lambda ends: hf_prefill(hf, [[s] for s in seqs], ends),
            }
            for label, m in [("lengthwise+compile", fast), ("lengthwise", lm)]:
                if m is not None:
                    systems[label] = lambda ends, m=m: m.next_token_logits(seqs, max_tokens_per_forward=65536, on_group=lambda g: (
                        ends.append((torch.cuda.Event(enable_timing=True), len(g))), ends[-1][0].record()))
            if args.triton_prefill:
                def triton_prefill(ends, run=systems["lengthwise"], on=True, lm=lm):  # run reads lm.backend per call
                    with switches(lm, triton_prefill=on, triton_prefill_min=0):
                        return run(ends)
                with torch.inference_mode(), switches(lm, triton_prefill=True, triton_prefill_min=0):
                    got_t = lm.next_token_logits(seqs[:24])
                err_t = ((got_t.float() - want.float()).norm() / want.float().norm()).item()
                assert err_t <= bound, f"{name} {mix_name}: Triton prefill logits off the reference by {err_t:.3g}"
                systems["lengthwise+triton-prefill"] = triton_prefill  # on for every pack
                systems["lengthwise+flash-prefill"] = lambda ends: triton_prefill(ends, on=False)  # FA2 only
            flops = model_flops(lm.config, lens)
            for sysname, fn in systems.items():
                ttft_run(fn)  # warm-up
                runs = sorted((ttft_run(fn) for _ in range(args.repeats)), key=lambda x: x[0])
                sec, ttft = runs[len(runs) // 2]
                rows.append({"model": name, "mix": mix_name, "system": sysname, "prompts": n, "tokens": tokens,
                             "check_rel_err": err,
                             "seconds": sec, "tokens_per_s": tokens / sec, "mean_ttft_s": ttft,
                             "mfu": flops / sec / 1e12 / peak, "peak_gib": peak_mem_gib(lambda: fn([]))})
            k = len(systems)
            ours = max(rows[-k:], key=lambda r: r["tokens_per_s"] if r["system"].startswith("lengthwise") else 0)
            for r in rows[-k:]:
                r["lengthwise_speedup"] = ours["tokens_per_s"] / r["tokens_per_s"]
            print(table(rows[-k:], ["model", "mix", "system", "tokens_per_s", "mean_ttft_s", "mfu", "lengthwise_speedup", "peak_gib"]), flush=True)
        del lm, hf, ref, fast
        torch.cuda.empty_cache()
    return rows


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """(share of prompts whose first 8 tokens are equal, share of equal tokens position by position)."""
    first8 = sum(x[:8] == y[:8] for x, y in zip(a, b)) / len(a)
    return first8, sum(p == q for x, y in zip(a, b) for p, q in zip(x, y)) / sum(map(len, a))


def generation(folder, args, bw, dev=DEV, B=64, new=128):
    import transformers
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    lm = lw.load(folder, device=dev, dtype=dtype)
    gguf = folder.suffix == ".gguf"
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder.parent if gguf else folder), **({"gguf_file": folder.name} if gguf else {}),
        dtype=dtype, attn_implementation="sdpa").to(dev).eval()
    model = "smollm2-135m" if gguf else folder.name
    lens = mix("lognormal", B, seed=5)
    seqs = random_ids(lens, lm.config.vocab_size, seed=6, low=10)
    L = max(lens)
    ids, mask = (t.to(dev) for t in padded(seqs, left=True))

    fast = lw.load(folder, device=dev, dtype=dtype, compile=True) if args.compile else None

    def ours(graph=True, m=lm):  # m.backend read per call (the CUDA graph captures it)
        return generate_ids(m.module, seqs, new, set(), backend=m.backend, cuda_graph=graph and dev.type == "cuda")

    def theirs(**kw):  # kw: cache_implementation="static", with which transformers compiles the decode step itself
        with torch.inference_mode():
            return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, pad_token_id=0, **kw)[:, L:].tolist()

    a, b, e = ours(), theirs(), ours(graph=False)
    first8, _ = agreement(a, b)
    graph_vs_eager = agreement(a, e)[1]
    print(f"generation: first 8 tokens equal to HF's for {first8:.0%} of prompts; CUDA graph vs eager decode "
          f"token agreement {graph_vs_eager:.1%}", flush=True)
    assert all(len(x) == new for x in a)
    more = {"first8_equal_to_hf": first8, "graph_vs_eager_agreement": graph_vs_eager}
    # HF's static cache: generate compiles the decode step (torch.compile, "reduce-overhead") on its first call,
    # on a GPU; this call is the warm-up and the check, outside the timing
    static = {"cache_implementation": "static"}
    try:
        s = theirs(**static)
        s8, s_agree = agreement(s, b)
        compiled = hasattr(hf, "_compiled_call")  # set by transformers when generate compiles the forward
        print(f"HF static cache (compiled: {compiled}) vs HF dynamic greedy: first 8 tokens equal for {s8:.0%} of "
              f"prompts, token agreement {s_agree:.1%}", flush=True)
        more["hf_static"] = {"compiled": compiled, "first8_equal_to_hf_dynamic": s8,
                             "token_agreement_with_hf_dynamic": s_agree,
                             "compile_config": (hf.generation_config.compile_config or transformers.CompileConfig()).to_dict()}
        static_error = None
    except Exception as err:  # record it in the results, keep the other rows
        static_error = f"{type(err).__name__}: {str(err)[:500]}"
        print(f"HF static cache failed: {static_error}", flush=True)
    t_prefill, _ = timed(lambda: lm.next_token_logits(seqs), repeats=5)
    rows = []
    cfg = lm.config
    weight_bytes = sum(p.numel() * p.element_size() for n, p in lm.module.named_parameters() if "tok_embeddings" not in n)
    weight_bytes += cfg.vocab_size * cfg.dim * lm.dtype.itemsize  # the LM head (tied) is read whole each step
    mean_ctx = sum(lens) / B + new / 2
    kv_bytes = B * mean_ctx * cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * lm.dtype.itemsize
    roofline_step = (weight_bytes + kv_bytes) / (bw * 1e9)
    systems = [("hf_generate_padded", theirs), ("hf_generate_static", lambda: theirs(**static)),
               ("lengthwise_eager_decode", lambda: ours(False)), ("lengthwise", ours)]
    from lengthwise.attention import have_triton
    if dev.type == "cuda" and have_triton() and lm.backend.triton_decode:
        def ours_flash():  # the decode step on FlashAttention's varlen kernel, RoPE and cache writes unfused
            with switches(lm, triton_decode=False):
                return ours()
        t = ours_flash()
        print(f"fused Triton decode step vs FlashAttention decode: token agreement {agreement(a, t)[1]:.1%}", flush=True)
        systems.append(("lengthwise+flash-decode", ours_flash))
    else:
        print("no triton here (or LENGTHWISE_TRITON_DECODE=0): lengthwise decodes on FlashAttention", flush=True)
    if fast is not None:
        c = ours(m=fast)  # compiles, then captures the compiled step
        print(f"compiled vs eager CUDA-graph decode: token agreement {agreement(a, c)[1]:.1%}", flush=True)
        systems.append(("lengthwise+compile", lambda: ours(m=fast)))
    for sysname, fn in systems:
        try:
            if sysname == "hf_generate_static" and static_error:
                raise RuntimeError(static_error)
            sec, _ = timed(fn, repeats=args.repeats)
            peak = peak_mem_gib(fn)
        except Exception as err:  # the compiled peer's failure is a result; any other is a bug
            if sysname != "hf_generate_static":
                raise
            rows.append({"model": model, "system": sysname, "prompts": B, "new_tokens": new,
                         "error": static_error or f"{type(err).__name__}: {str(err)[:500]}"})
            continue
        step = sec / new if sysname.startswith("hf_") else (sec - t_prefill) / (new - 1)
        rows.append({"model": model, "system": sysname, "prompts": B, "new_tokens": new, "seconds": sec,
                     "output_tokens_per_s": B * new / sec, "decode_step_ms": step * 1e3,
                     "roofline_step_ms": roofline_step * 1e3, "pct_of_hbm_roofline": roofline_step / step * 100,
                     "peak_gib": peak})
    timed_rows = [r for r in rows if "error" not in r]
    best = max(r["output_tokens_per_s"] for r in timed_rows)
    ours_tps = next(r["output_tokens_per_s"] for r in timed_rows if r["system"] == "lengthwise")
    for r in timed_rows:
        r["lengthwise_speedup"] = best / r["output_tokens_per_s"]
    # lengthwise's default (CUDA-graph decode) over each HF peer: the ratios the targets are stated in
    more["lengthwise_over_hf"] = {r["system"]: ours_tps / r["output_tokens_per_s"] for r in timed_rows
                                  if r["system"].startswith("hf_")}
    print(table(rows, ["system", "output_tokens_per_s", "decode_step_ms", "pct_of_hbm_roofline", "lengthwise_speedup",
                       "peak_gib", "error"]), flush=True)
    return rows, more


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=["prefill", "generate", "all"])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--n-long", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="smollm2-135m,llama-1b")
    ap.add_argument("--mixes", default="lognormal,bimodal,long")
    ap.add_argument("--compile", action="store_true", help="add lengthwise+compile rows")
    ap.add_argument("--triton-prefill", action="store_true", help="add rows with the Triton prefill kernel on for every pack, and off")
    ap.add_argument("--smoke", action="store_true", help="the generation part on the CPU with a tiny random Llama, "
                    "8 prompts x 16 tokens: checks the script runs (writes generation_smoke.json)")
    args = ap.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as d:
            rows, more = generation(tiny_llama(Path(d) / "tiny-llama"), args, copy_gbps("cpu"), torch.device("cpu"), 8, 16)
        save("generation_smoke", rows, {"smoke": True, **more}, lambda plt, rows: bar_plot(
            [r for r in rows if "error" not in r], "model", "system", "output_tokens_per_s", "output tokens/s"))
        return
    smol = locate_embedded(EMBEDDED["smollm2-135m"])
    peak, bw = matmul_tflops(), copy_gbps()
    print(f"{torch.cuda.get_device_name()}: bf16 matmul {peak:.0f} TFLOP/s, copy {bw:.0f} GB/s", flush=True)
    extra = {"matmul_tflops": peak, "copy_gbps": bw}
    with tempfile.TemporaryDirectory() as d:
        if args.part in ("prefill", "all"):
            models = [(m, smol if m == "smollm2-135m" else make_1b(Path(d))) for m in args.models.split(",")]
            rows = prefill(models, args, Path(d), peak)

            def plot(plt, rows):
                for r in rows:
                    r["workload"] = f"{r['model']}\n{r['mix']}"
                return bar_plot(rows, "workload", "system", "tokens_per_s", "prefill tokens/s")
            save("prefill", rows, extra, plot)
            print(table(rows, ["model", "mix", "system", "tokens_per_s", "mean_ttft_s", "mfu", "lengthwise_speedup", "peak_gib"]))
    if args.part in ("generate", "all"):
        rows, more = generation(smol, args, bw)
        save("generation", rows, {**extra, **more}, lambda plt, rows: bar_plot(
            [r for r in rows if "error" not in r], "model", "system", "output_tokens_per_s", "output tokens/s"))


if __name__ == "__main__":
    main()
