"""Dataset Decomposition (Pouransari et al. 2024) against concat-and-chunk, with and without document masks, at
equal tokens per step, on an algorithmic task at mixed lengths. Writes training loss, held-out loss, tokens/s and
exact match at the training lengths against wall-clock time (JSON + PNG) to benchmarks/results/, and the time each
fill takes to reach chunk_masked's best held-out loss (the issue's target: Dataset Decomposition >= 2x faster).

    python benchmarks/dataset_decomposition.py --device cpu --budget 60            # a CPU check
    python benchmarks/dataset_decomposition.py --device cuda --budget 480 --dim 384 --layers 6
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from lengthwise.train.loop import METRICS, TrainConfig, train

FILLS = ("buckets", "buckets_whole", "chunk", "chunk_masked")


def time_to_equal_loss(runs: dict[str, list[dict]], baseline: str = "chunk_masked") -> dict:
    """The target compares fills at equal loss on the same held-out samples (their training losses see different
    pieces): the baseline's best held-out loss, the wall-clock seconds each fill first reaches it (accuracy checks
    excluded), and the baseline's time over each fill's (None where a fill never reaches it)."""
    out = {}
    for fill, recs in runs.items():
        ev = [r for r in recs if "eval_loss" in r]
        out[fill] = {"steps": recs[-1]["step"], "tokens_per_s": recs[-1]["tokens_per_s"],
                     "final_eval_loss": ev[-1]["eval_loss"] if ev else None,
                     "best_eval_loss": min(r["eval_loss"] for r in ev) if ev else None,
                     "final_accuracy": ev[-1]["accuracy"] if ev else None}
    if baseline in runs and out[baseline]["best_eval_loss"] is not None:
        target = out[baseline]["best_eval_loss"]
        first = {f: next((r["time_s"] for r in recs if r.get("eval_loss", float("inf")) <= target), None)
                 for f, recs in runs.items()}
        out["equal_loss"] = {"baseline": baseline, "loss": target, "seconds": first,
                             "speedup_over_baseline": {f: (None if t is None else first[baseline] / max(t, 1e-9))
                                                       for f, t in first.items() if f != baseline}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="copy")
    ap.add_argument("--min-len", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=120)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds of training per fill")
    ap.add_argument("--tokens-per-step", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--pe", default="rope")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fills", default=",".join(FILLS))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dataset_decomposition")
    a = ap.parse_args()
    runs = {}
    work = Path(tempfile.mkdtemp(prefix="lw-dd-"))
    try:
        for fill in a.fills.split(","):
            cfg = TrainConfig(task=a.task, pe=a.pe, n_layers=a.layers, dim=a.dim, n_heads=a.heads,
                              train_min_len=a.min_len, train_max_len=a.max_len, steps=10**9, budget_s=a.budget,
                              tokens_per_step=a.tokens_per_step, fill=fill, chunk=a.chunk, eval_every=a.eval_every,
                              device=a.device)
            r = train(cfg, work / fill)
            runs[fill] = [json.loads(x) for x in (work / fill / METRICS).read_text().splitlines()]
            print(f"{fill}: {r['steps']} steps, {r['tokens'] / r['seconds']:,.0f} tokens/s, loss {r['loss']:.4f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    import torch
    device = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    summary = time_to_equal_loss(runs)
    a.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                                     "device": device, "summary": summary, "runs": runs}))
    print(json.dumps(summary, indent=1))
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 3.6), dpi=150)
    axes = fig.subplots(1, 3)
    from matplotlib import colormaps
    for i, (fill, recs) in enumerate(runs.items()):
        c = colormaps["viridis"](0.85 * i / (len(runs) - 1))
        t = [r["time_s"] for r in recs]
        axes[0].plot(t, [r["loss"] for r in recs], color=c, label=fill, linewidth=1)
        axes[1].plot(t, [r["tokens_per_s"] for r in recs], color=c, label=fill)
        ev = [r for r in recs if "accuracy" in r]
        axes[0].plot([r["time_s"] for r in ev], [r["eval_loss"] for r in ev], color=c, marker=".", linestyle="--",
                     label=f"{fill} (held out)")
        axes[2].plot([r["time_s"] for r in ev], [100 * r["accuracy"] for r in ev], color=c, marker="o", label=fill)
    for ax, y in zip(axes, ("loss (answer tokens)", "tokens/s", "exact match (%)")):
        ax.set_xlabel("wall-clock (s)")
        ax.set_ylabel(y)
        ax.grid(True, alpha=0.3)
    axes[2].set_ylim(0, 102)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{a.task} at lengths {a.min_len}-{a.max_len}, {a.tokens_per_step} tokens a step, {device}")
    fig.tight_layout()
    fig.savefig(a.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
