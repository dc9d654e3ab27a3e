"""The attention bias of the lab's bias schemes (ALiBi, T5, FIRE) in one call per sequence length against one call
per sequence (the reference kernel's old path), in the same process on the same batches: forward + backward of
a lab model on a packed step of many short documents (the copy task at lengths 1..20, as the lab trains).

    PYTHONPATH=src python benchmarks/bias_batch.py [--device cuda] [--tokens 8192] [--reps 5]

Writes bias_batch.json to $OUT (default benchmarks/results): ms per step both ways and the ratio, per scheme,
and the largest difference of the loss between the two (the same arithmetic, batched).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name  # noqa: E402  (also puts src/ on the path)

import torch  # noqa: E402


def main():
    from lengthwise.positions.scratch import base
    from lengthwise.tasks.algorithmic import get_task
    from lengthwise.train.batches import Piece, pack
    from lengthwise.train.loop import TrainConfig, backend_for, build_model, loss_of
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--pes", default="alibi,t5,fire")
    a = ap.parse_args()
    dev = torch.device(a.device)
    rows = []
    for pe in a.pes.split(","):
        cfg = TrainConfig(task="copy", pe=pe, n_layers=4, dim=128, n_heads=4, train_max_len=20, device=a.device,
                          precision="fp32", attention="reference")
        torch.manual_seed(0)
        model = build_model(cfg).to(dev)
        backend = backend_for(model, dev, "fp32", "reference")
        task, rng, pieces, n = get_task("copy"), random.Random(0), [], 0
        while n < a.tokens:
            e = task.sample(rng.randint(1, 20), rng.getrandbits(32), stream="train").encode()
            p = Piece(e.ids, e.scored)
            pieces.append(p)
            n += len(p.ids)
        tb = pack(pieces, dev)

        def step():
            loss, _ = loss_of(model, tb, backend, "fp32")
            loss.backward()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return float(loss.detach())

        def timed():
            step()  # warm-up
            ts = []
            for _ in range(a.reps):
                t = time.perf_counter()
                loss = step()
                ts.append(time.perf_counter() - t)
            return 1000 * sorted(ts)[len(ts) // 2], loss

        batched, loss_b = timed()
        keep = base.SequenceBias.batch
        del base.SequenceBias.batch  # the old path: one bias call per sequence
        try:
            single, loss_s = timed()
        finally:
            base.SequenceBias.batch = keep
        rows.append({"pe": pe, "docs": len(pieces), "tokens": n, "ms_per_step_batched": round(batched, 2),
                     "ms_per_step_per_sequence": round(single, 2), "speedup": round(single / batched, 3),
                     "loss_batched": loss_b, "loss_per_sequence": loss_s})
        print(rows[-1], flush=True)
    out = Path(os.environ.get("OUT", "benchmarks/results"))
    out.mkdir(parents=True, exist_ok=True)
    res = {"benchmark": "bias_batch", "device": device_name() if dev.type == "cuda" else "CPU (this 2-core machine)", "date": time.strftime("%Y-%m-%d"),
           "command": " ".join(["python", *sys.argv]), "model": "lab copy model, 4 layers, d=128, 4 heads, fp32, "
           "reference kernel", "rows": rows}
    name = os.environ.get("NAME", "bias_batch")
    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=150)
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["ms_per_step_per_sequence"] for r in rows], 0.4, label="one call per sequence",
           color="#bbbbbb")
    ax.bar([i + 0.2 for i in x], [r["ms_per_step_batched"] for r in rows], 0.4, label="one call per length",
           color="#0072b2")
    ax.set_xticks(list(x), [f"{r['pe']} ({r['speedup']:.2f}x)" for r in rows])
    ax.set_ylabel("ms per training step (fwd + bwd)")
    ax.set_title(f"bias schemes, {res['device']}, {res['date']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png")


if __name__ == "__main__":
    main()
