"""Peak GPU memory and time of one long prefill plus decode with smollm2-135m, 16k to 128k tokens.

    LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src python benchmarks/long_context.py [--lengths 16k,32k,64k,128k]

For each position scheme: one prompt of L tokens (a passkey prompt, so the answer is checkable),
prefill, then 32 greedy new tokens through the CUDA-graph decode. Reports prefill seconds, decode
tokens/s, the peak memory torch allocated and the KV cache's share of it. Writes
$OUT/long_context.json and long_context.png (or benchmarks/results/).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lengthwise as lw  # noqa: E402
from lengthwise.evaluation.backends import make_render  # noqa: E402
from lengthwise.evaluation.grid import parse_lengths  # noqa: E402
from lengthwise.generate import Sampling, generate_ids  # noqa: E402
from lengthwise.tasks import get_task  # noqa: E402

SCHEMES = ["self_extend:group=32,window=2048", "distance_cap", "sinks:sinks=4", "yarn:factor=16", "none"]
NEW = 32


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="16k,32k,64k,128k")
    ap.add_argument("--schemes", default=",".join(SCHEMES), help="';'-separated when a scheme has options")
    args = ap.parse_args()
    lengths = parse_lengths(args.lengths)
    schemes = args.schemes.split(";") if ";" in args.schemes else SCHEMES
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}  torch {torch.__version__}", flush=True)
    rows = []
    for spec in schemes:
        lm = lw.load("smollm2-135m", device="cuda", dtype="bfloat16", positions=spec)
        render = make_render(lm.tokenizer, chat=True)
        weights = torch.cuda.memory_allocated()
        for n in lengths:
            s = get_task("passkey").make(render, n, 50.0, seed=7)
            ids = render(s.prompt, s.answer_prefix)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            first = {}
            out = generate_ids(lm.module, [ids], NEW, set(), Sampling(), lm.backend,
                               on_step=lambda k: first.setdefault("t", time.perf_counter()) if k == 1 else None)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            cfg = lm.config
            kv_per_tok = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2 * (1.5 if lm.module.rotary.far_keys else 1)
            text = lm.tokenizer.decode(out[0], skip_special_tokens=True)
            row = {"scheme": spec, "length": n, "prompt_tokens": len(ids), "prefill_s": first["t"] - t0,
                   "decode_tok_s": (NEW - 1) / (t1 - first["t"]), "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                   "weights_gib": weights / 2**30, "kv_cache_gib": kv_per_tok * (len(ids) + NEW) / 2**30,
                   "passkey_found": get_task("passkey").score(text, s) == 1.0}
            rows.append(row)
            print(f"{spec:34s} {n:>7d}  prefill {row['prefill_s']:6.2f} s  decode {row['decode_tok_s']:7.1f} tok/s  "
                  f"peak {row['peak_gib']:5.2f} GiB (kv {row['kv_cache_gib']:.2f})  passkey {row['passkey_found']}",
                  flush=True)
        del lm
        torch.cuda.empty_cache()
    out = Path(os.environ.get("OUT", "benchmarks/results"))
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": dev, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
              "model": "smollm2-135m", "dtype": "bfloat16", "new_tokens": NEW, "rows": rows,
              "gpu_total_gib": torch.cuda.get_device_properties(0).total_memory / 2**30}
    (out / "long_context.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "long_context.png")


def plot(result, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    a, b = fig.subplots(1, 2)
    for spec in dict.fromkeys(r["scheme"] for r in result["rows"]):
        rs = [r for r in result["rows"] if r["scheme"] == spec]
        a.plot([r["length"] for r in rs], [r["peak_gib"] for r in rs], marker="o", label=spec)
        b.plot([r["length"] for r in rs], [r["prefill_s"] for r in rs], marker="o", label=spec)
    for ax, y in ((a, "peak GPU memory (GiB)"), (b, "prefill time (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
    a.axhline(result["gpu_total_gib"], color="gray", ls="--", lw=1)
    a.legend(fontsize=7)
    fig.suptitle(f"smollm2-135m, one prompt + {result['new_tokens']} new tokens, bf16 — {result['device']}, {result['date']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
