"""Where the time goes, for the targets docs/benchmarks.md reports as missed.

    LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src python benchmarks/where_time_goes.py

For each workload: wall time, GPU-busy time (the sum of kernel durations from torch.profiler), the
gap between them (launch gaps and Python overhead), and the GPU time split by kernel kind.
Writes $OUT/profile.json (or benchmarks/results/).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, mix, random_ids, switches, sync
from torch.profiler import ProfilerActivity, profile

import lengthwise as lw
from decode_profile import decoder
from lengthwise import RaggedBatch
from lengthwise.models.load import EMBEDDED, locate_embedded


def kind(name: str) -> str:
    n = name.lower()
    if "flash" in n or "fmha" in n or "attn" in n:
        return "attention"
    if "gemm" in n or "cutlass" in n or "sm90" in n or "nvjet" in n or "matmul" in n or "xmma" in n:
        return "gemm"
    if "triton" in n:
        return "fused (triton)"
    if "norm" in n:
        return "norm"
    if "index" in n or "scatter" in n or "gather" in n or "copy" in n or "cat" in n:
        return "copy/index"
    return "elementwise/other"


def measure(label: str, fn, reps: int = 5) -> dict:
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    wall = (time.perf_counter() - t) / reps
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        sync()
    split: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            split[kind(e.name)] = split.get(kind(e.name), 0.0) + e.device_time / 1e3 / reps
    busy = sum(split.values())
    row = {"workload": label, "wall_ms": wall * 1e3, "gpu_busy_ms": busy, "gap_ms": wall * 1e3 - busy,
           "busy_pct": busy / (wall * 1e3) * 100, "split_ms": dict(sorted(split.items(), key=lambda kv: -kv[1]))}
    print(f"{label}: wall {row['wall_ms']:.2f} ms, GPU busy {busy:.2f} ms ({row['busy_pct']:.0f}%), "
          + ", ".join(f"{k} {v:.2f}" for k, v in row["split_ms"].items()), flush=True)
    return row


ENCODER_VARIANTS = {  # name: (lw.load's residual, compile, cuBLASLt GELU epilogue)
    "eager": ("float32", False, False), "compile": ("float32", True, False),
    "bf16": ("model", False, False), "bf16+gelu": ("model", False, True),
    "bf16+compile": ("model", True, False), "bf16+gelu+compile": ("model", True, True),
}


def encoder_rows(variants: list[str]) -> list[dict]:
    """bert-base (random init) on mix (a), 3072 texts in 64k-token packs; each row also gives its embeddings'
    error against the float32 reference backend, and the GPU-only time of the same packs built beforehand
    (the wall time less that is host work the GPU waited for)."""
    from lengthwise.packing import token_budget
    rows = []
    minilm = locate_embedded(EMBEDDED["minilm-l6"])
    with tempfile.TemporaryDirectory() as d:
        import transformers
        torch.manual_seed(0)
        transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False).save_pretrained(f"{d}/bert-base")
        for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(minilm / f, f"{d}/bert-base/{f}")
        ids = random_ids(mix("lognormal", 3072, seed=1), 30522)
        ref = lw.load(f"{d}/bert-base", device="cuda", dtype="float32", backend="reference").embed_ids(ids[:64])
        for v in variants:
            residual, compiled, gelu = ENCODER_VARIANTS[v]
            enc = lw.load(f"{d}/bert-base", device="cuda", dtype="bfloat16", compile=compiled, residual=residual)
            with switches(enc, gelu_epilogue=gelu):  # enc.backend, read by every forward below
                got = enc.embed_ids(ids[:64])
                row = measure(f"bert-base mix (a), 3072 texts, 64k-token packs, {v}",
                              lambda: enc.embed_ids(ids, max_tokens_per_forward=65536), reps=3)
                batches = [RaggedBatch.from_lists([ids[i] for i in g], "cuda") for g in token_budget([len(s) for s in ids], 65536)]

                def gpu_only():  # what embed_ids runs per pack: the forward, then the pooling head
                    for b in batches:
                        enc.head(enc.module(b.tokens, b.positions, enc.step(b)), b.cu_seqlens)
                gpu_only()
                sync()
                t = time.perf_counter()
                for _ in range(3):
                    gpu_only()
                sync()
                row["prebuilt_packs_ms"] = (time.perf_counter() - t) / 3 * 1e3
            row["rel_err_vs_float32"] = float(((got - ref) ** 2).sum() ** 0.5 / (ref ** 2).sum() ** 0.5)
            print(f"  packs built beforehand: {row['prebuilt_packs_ms']:.1f} ms; error against float32 "
                  f"{row['rel_err_vs_float32']:.4f}", flush=True)
            rows.append(row)
            del enc
    return rows


DECODE_VARIANTS = {"eager": "", "flash": " +FlashAttention decode (Triton off)", "compile": " +compile"}


def decode_rows(variants: list[str]) -> list[dict]:
    rows = []
    smol = lw.load("smollm2-135m", device="cuda", dtype="bfloat16")
    seqs = random_ids(mix("lognormal", 64, seed=5), smol.config.vocab_size, low=10)
    for variant in variants:
        m = lw.load("smollm2-135m", device="cuda", dtype="bfloat16", compile=True) if variant == "compile" else smol
        # flash: the fused Triton decode step off, in the Backend the graph captures (and the prefill before it)
        backend = dataclasses.replace(m.backend, triton_decode=m.backend.triton_decode and variant != "flash")
        cache, _, graph = decoder(m, seqs, 129, True, backend)  # prefilled, the decode step captured

        def step():
            graph()  # the captured step, replayed
            cache.length -= 1  # the same step each time: the profile of one decode step
        rows.append(measure(f"smollm2-135m decode step, 64 sequences, CUDA graph{DECODE_VARIANTS[variant]}",
                            step, reps=50))
    return rows


def prefill_rows() -> list[dict]:
    """The 1.1B Llama on the long mix (256-8192 tokens, 48 prompts, 64k-token forwards), the fused layers
    (attention/triton_fused.py) on and off: where the MFU target's time goes."""
    from causal import make_1b
    rows = []
    with tempfile.TemporaryDirectory() as d:
        lm = lw.load(make_1b(Path(d)), device="cuda", dtype="bfloat16")
        seqs = random_ids(mix("long", 48, seed=3), lm.config.vocab_size, seed=4, low=10)
        b = lm.backend  # the defaults, as lw.load resolved them
        for label, on, tp in [("", b.fused, b.triton_prefill),
                              (" (FlashAttention-2 prefill)", b.fused, False),
                              (" (fused layers off, FlashAttention-2)", False, False)]:
            with switches(lm, fused=on, triton_prefill=tp):  # lm.next_token_logits reads lm.backend
                lm.next_token_logits(seqs[:4], max_tokens_per_forward=65536)  # autotune outside the timing
                rows.append(measure(f"llama-1.1b prefill, long mix, 48 prompts{label}",
                                    lambda: lm.next_token_logits(seqs, max_tokens_per_forward=65536), reps=3))
    return rows


@torch.inference_mode()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="encoder,decode,prefill", help="comma list of: encoder, decode, prefill")
    ap.add_argument("--variants", default=",".join(DECODE_VARIANTS), help="decode-step variants, comma list of: "
                    + ", ".join(DECODE_VARIANTS))
    ap.add_argument("--encoder-variants", default="eager,compile,bf16+gelu+compile",
                    help="encoder variants, comma list of: " + ", ".join(ENCODER_VARIANTS))
    args = ap.parse_args()
    parts, variants, enc_variants = args.parts.split(","), args.variants.split(","), args.encoder_variants.split(",")
    bad = [v for v in enc_variants if v not in ENCODER_VARIANTS] + [v for v in variants if v not in DECODE_VARIANTS] + [p for p in parts if p not in ("encoder", "decode", "prefill")]
    if bad:
        raise SystemExit(f"unknown part or variant {bad[0]!r}: see --help")
    rows = ((encoder_rows(enc_variants) if "encoder" in parts else []) + (decode_rows(variants) if "decode" in parts else [])
            + (prefill_rows() if "prefill" in parts else []))
    out = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                                  "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
