"""KV compression's speed and memory on the GPU (issue 18): full cache against compressed, same run, same GPU.

    LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src python benchmarks/kv_speed.py [--smoke]

SmolLM2-135M, bf16, random prompt tokens (speed and memory do not depend on the text), EOS ignored.
  decode     B x L prompts, 64 new greedy tokens: decode tokens/s, ms per step, and the step against the HBM
             roofline (weights + the cache bytes a step reads, over the copy bandwidth measured now); at 16 x 32k
             (yarn:factor=4, the context-extension setting that composes with eviction: a remap measures
             distance by cache slot) and 64 x 8k, each policy at 0.875 against full.
  batch      the cache bytes per sequence in decode at 8k, read from the allocator (memory_allocated during
             decode less before the call, over B), and the largest batch whose cache fits 16 GiB; the largest
             compressed batch is then run for real and its allocator reading reported.
  prefill    one 128k prompt: the allocator's peak over the weights, full against 0.875 (chunked prefill).
  ttft       16 x 8k: time to the first token with each policy.
Writes $OUT/kv_speed.json and .png (or benchmarks/results/).
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import copy_gbps, save  # noqa: E402

import lengthwise as lw  # noqa: E402
from lengthwise.generate import Sampling, Timing, generate_ids  # noqa: E402

NEW = 64
GiB = 2 ** 30


def prompts(B: int, L: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab - 100, (B, L), generator=g).tolist()


def run(lm, ids, new: int = NEW, budget: int | None = None, chunk: int = 4096) -> dict:
    """One generation; allocator readings around it and the decode split."""
    dev = lm.device
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    seen = {}

    def on_step(k):
        if k == 2 and cuda:  # in decode: the cache as decode holds it, plus one step's activations
            seen["decode"] = torch.cuda.memory_allocated() - before

    t = Timing()
    out = generate_ids(lm.module, ids, new, set(), Sampling(), lm.backend, on_step=on_step, policy=lm.kv, timing=t,
                       max_batch_tokens=budget, chunk=chunk)
    assert all(len(o) == new for o in out)
    peak = torch.cuda.max_memory_allocated() - before if cuda else 0
    B = len(ids)
    return {"B": B, "prompt": len(ids[0]), "prefill_s": t.prefill_s, "decode_s": t.decode_s,
            "ttft_s": t.prefill_s, "decode_tok_s": B * (new - 1) / t.decode_s, "ms_per_step": 1e3 * t.decode_s / (new - 1),
            "kv_bytes_storage": sum(t.kv_bytes), "kv_bytes_alloc": seen.get("decode"), "peak_over_before": peak}


def weight_bytes(lm) -> int:
    return sum(p.numel() * p.element_size() for p in lm.module.parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks the script runs")
    ap.add_argument("--policies", default="streaming,snapkv,tova,knorm,pyramidkv")
    ap.add_argument("--ratio", type=float, default=0.875)
    a = ap.parse_args()
    dev = "cpu" if a.smoke else "cuda"
    dtype = "float32" if a.smoke else "bfloat16"
    S = (lambda n: max(64, n // 256)) if a.smoke else (lambda n: n)
    policies = ["full"] + [f"{p}:ratio={a.ratio}" for p in a.policies.split(",")]
    gbps = copy_gbps() if not a.smoke else float("nan")
    rows = []
    # timeout(1) sends SIGTERM: exit through the finally below, so the rows so far are written
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))

    def plot(plt, rows):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, name in zip(axes, ["decode 16x32k", "decode 64x8k"]):
            sub = [r for r in rows if r["row"] == name and "decode_tok_s" in r]
            ax.bar(range(len(sub)), [r["decode_tok_s"] for r in sub], color="#0072B2")
            ax.set_xticks(range(len(sub)), [r["kv"].split(":")[0] for r in sub], fontsize=7, rotation=30)
            ax.set_title(f"{name}, ratio {a.ratio}", fontsize=9)
            ax.set_ylabel("decode tokens/s")
        return fig

    try:  # whatever ran is written, even if a later part fails or the call's time runs out
        for name, B, L, pos in [("decode 16x32k", 16, 32768, "yarn:factor=4"), ("decode 64x8k", 64, 8192, None)]:
            B = 2 if a.smoke else B
            for kv in policies:
                lm = lw.load("smollm2-135m", device=dev, dtype=dtype, positions=pos, kv=kv)
                ids = prompts(B, S(L), lm.config.vocab_size)
                r = run(lm, ids)
                kv_read = r["kv_bytes_alloc"] or r["kv_bytes_storage"]
                r.update(row=name, kv=kv, positions=pos or "none",
                         roofline_ms=1e3 * (weight_bytes(lm) + kv_read) / (gbps * 1e9) if gbps == gbps else None)
                r["roofline_share"] = r["roofline_ms"] / r["ms_per_step"] if r["roofline_ms"] else None
                rows.append(r)
                print(f"{name:14} {kv:28} {r['decode_tok_s']:10.0f} tok/s {r['ms_per_step']:7.2f} ms/step "
                      f"kv {kv_read / GiB:6.2f} GiB  ttft {r['ttft_s']:.2f} s", flush=True)
                del lm
        for r in rows:  # against full, same row
            base = next(x for x in rows if x["row"] == r["row"] and x["kv"] == "full")
            r["speedup_vs_full"] = r["decode_tok_s"] / base["decode_tok_s"]
        # the largest batch of 8k prompts whose decode cache fits 16 GiB, from the allocator's per-sequence reading
        fits = []
        for r in [x for x in rows if x["row"] == "decode 64x8k"]:
            per_seq = (r["kv_bytes_alloc"] or r["kv_bytes_storage"]) / r["B"]
            fits.append({"row": "batch in 16 GiB at 8k", "kv": r["kv"], "bytes_per_seq": per_seq,
                         "max_batch": int(16 * GiB // per_seq)})
        for f in fits:
            f["x_full"] = f["max_batch"] / fits[0]["max_batch"]
        if not a.smoke:  # run the best compressed batch for real, in one group
            best = max(fits[1:], key=lambda f: f["max_batch"])
            lm = lw.load("smollm2-135m", device=dev, dtype=dtype, kv=best["kv"])
            try:  # prefill chunks of 1k keep the prefill's scratch (budget + chunk per sequence) within the GPU
                r = run(lm, prompts(best["max_batch"], 8192, lm.config.vocab_size), new=8, budget=1 << 40, chunk=1024)
                best["ran"] = {k: r[k] for k in ("B", "kv_bytes_alloc", "kv_bytes_storage", "peak_over_before", "decode_tok_s")}
            except Exception as e:  # recorded, not hidden
                best["ran"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print("largest compressed batch:", best, flush=True)
            del lm
        rows += fits
        # one 128k prefill: the allocator's peak, full against compressed
        for kv in ["full", f"snapkv:ratio={a.ratio}", f"streaming:ratio={a.ratio}"]:
            lm = lw.load("smollm2-135m", device=dev, dtype=dtype, positions=None if a.smoke else "yarn:factor=16", kv=kv)
            r = run(lm, prompts(1, S(131072), lm.config.vocab_size), new=4)
            rows.append({"row": "prefill 128k", "kv": kv, "peak_over_before": r["peak_over_before"], "prefill_s": r["prefill_s"]})
            print(f"prefill 128k  {kv:28} peak {r['peak_over_before'] / GiB:6.2f} GiB  {r['prefill_s']:.2f} s", flush=True)
            del lm
        base = next(x for x in rows if x["row"] == "prefill 128k" and x["kv"] == "full")
        for r in rows:
            if r["row"] == "prefill 128k":
                r["peak_vs_full"] = r["peak_over_before"] / base["peak_over_before"] if base["peak_over_before"] else None

    finally:
        save("kv_speed_smoke" if a.smoke else "kv_speed", rows,
             {"model": "smollm2-135m", "dtype": dtype, "new_tokens": NEW, "ratio": a.ratio, "copy_gbps": gbps}, plot)


if __name__ == "__main__":
    main()
