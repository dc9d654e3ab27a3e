"""The length lab's training speed on a GPU: the `gpu` preset's copy model under the default (bf16 autocast, the
kernel chosen per scheme) and under the old path (float32, reference attention), for nope, rope and alibi.

    python benchmarks/lab_speed.py                  # CUDA: 40 steps a run (20 s at most), about a minute on an H200
    python benchmarks/lab_speed.py --smoke          # CPU: a tiny model, 3 steps a run, the reference kernel

Each run is `train.loop.train` itself (sampling, packing, forward, backward, AdamW), from the same seed, so the
same weights and batches. steps/s counts from the warm-up's end (step `--warmup`) to the last step, from the
run's metrics.jsonl; a run that reaches `--budget` seconds stops there (its `steps` says how many it made, and
its learning-rate schedule was compressed to fit). The correctness rows: one batch, one set of weights, the
loss and gradients of the default against float32 reference; the loss must agree within 2e-2 (relative).
Writes lab_speed.json to $OUT (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name  # noqa: E402  (also puts src/ on the path)

import torch  # noqa: E402

PES = ("nope", "rope", "alibi")
BOUND_LOSS = 2e-2


def preset_train(smoke: bool) -> dict:
    from lengthwise.train.lab import PRESETS
    if smoke:
        return dict(PRESETS["smoke"]["train"], device="cpu")
    t = dict(PRESETS["gpu"]["train"])
    t.pop("budget_s")
    return t


def speed_row(pe: str, mode: str, train_kw: dict, steps: int, budget: float, warmup: int, tmp: Path) -> dict:
    from lengthwise.train.loop import METRICS, TrainConfig, train
    over = {} if mode == "default" else {"precision": "fp32", "attention": "reference"}
    cfg = TrainConfig(task="copy", pe=pe, seed=0, **{**train_kw, "steps": steps, "budget_s": budget, **over})
    out = tmp / f"{pe}-{mode}"
    t0 = time.perf_counter()
    r = train(cfg, out)
    wall = time.perf_counter() - t0
    m = [json.loads(x) for x in (out / METRICS).read_text().splitlines()]
    w = min(warmup, len(m) - 1)
    timed = (m[-1]["time_s"] - m[w - 1]["time_s"]) if w >= 1 else m[-1]["time_s"]
    n_timed = len(m) - w
    last = [x["loss"] for x in m[-5:]]
    return {"pe": pe, "mode": mode, "precision": cfg.precision, "attention": cfg.attention, "steps": r["steps"],
            "steps_per_s": n_timed / max(timed, 1e-9), "tokens_per_s": m[-1]["tokens"] / max(m[-1]["time_s"], 1e-9),
            "loss_last": m[-1]["loss"], "loss_last5_mean": sum(last) / len(last), "wall_s": wall}


def check_row(pe: str, train_kw: dict) -> dict:
    """One step's loss and gradients: the default (bf16 autocast, its kernel) against fp32 reference."""
    from lengthwise.tasks.algorithmic import get_task
    from lengthwise.train.batches import Filler, Piece
    from lengthwise.train.loop import TrainConfig, backend_for, build_model, loss_of
    cfg = TrainConfig(task="copy", pe=pe, seed=0, **{**train_kw, "precision": "bf16"})
    device = torch.device(cfg.device)
    module = build_model(cfg).to(device)
    task, rng = get_task(cfg.task), random.Random("check")

    def draw():
        e = task.sample(rng.randint(cfg.train_min_len, cfg.train_max_len), rng.getrandbits(32), stream="train").encode()
        return Piece(e.ids, e.scored)
    tb = Filler("docs", draw, cfg.tokens_per_step, cfg.chunk, random.Random("fill")).step(device, 0.0)
    res, grads = {}, {}
    for prec in ("fp32", "bf16"):
        backend = backend_for(module, device, prec)
        module.zero_grad(set_to_none=True)
        total, n = loss_of(module, tb, backend, prec)
        (total / n).backward()
        res[prec] = {"loss": total.item() / n, "attention": backend.kernel}
        grads[prec] = {k: p.grad.float().clone() for k, p in module.named_parameters() if p.grad is not None}
    ref = res["fp32"]["loss"]
    worst = max(((grads["bf16"][k] - g).norm() / g.norm()).item() for k, g in grads["fp32"].items() if g.norm() > 0)
    rel = abs(res["bf16"]["loss"] - ref) / ref
    return {"pe": pe, "attention_bf16": res["bf16"]["attention"], "loss_fp32_reference": ref,
            "loss_bf16": res["bf16"]["loss"], "loss_rel_err": rel, "worst_grad_rel_err": worst,
            "passed": rel <= BOUND_LOSS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, 3 steps a run")
    ap.add_argument("--steps", type=int, default=None, help="steps a run (default 40; smoke 3)")
    ap.add_argument("--budget", type=float, default=None, help="seconds a run at most (default 20; smoke 60)")
    ap.add_argument("--warmup", type=int, default=None, help="steps left out of steps/s (default 5; smoke 1)")
    ap.add_argument("--pes", default=",".join(PES))
    a = ap.parse_args(argv)
    if not a.smoke and not torch.cuda.is_available():
        print("lab_speed: no CUDA GPU here; run with --smoke on the CPU", file=sys.stderr)
        return 2
    steps = a.steps or (3 if a.smoke else 40)
    budget = a.budget or (60.0 if a.smoke else 20.0)
    warmup = a.warmup if a.warmup is not None else (1 if a.smoke else 5)
    train_kw = preset_train(a.smoke)
    pes = [p for p in a.pes.split(",") if p]
    t0 = time.perf_counter()
    rows, checks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for pe in pes:
            checks.append(check_row(pe, train_kw))
            print(json.dumps(checks[-1]), flush=True)
        for pe in pes:
            for mode in ("default", "old"):
                rows.append(speed_row(pe, mode, train_kw, steps, budget, warmup, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    speedup = {}
    for pe in pes:
        new, old = (next(r for r in rows if r["pe"] == pe and r["mode"] == m) for m in ("default", "old"))
        speedup[pe] = new["steps_per_s"] / old["steps_per_s"]
    res = {"benchmark": "lab_speed", "device": device_name(), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d", time.gmtime()), "smoke": a.smoke, "train": train_kw,
           "steps": steps, "budget_s": budget, "warmup": warmup, "rows": rows, "speedup": speedup,
           "checks": checks, "bound_loss": BOUND_LOSS, "passed": all(c["passed"] for c in checks),
           "wall_s": time.perf_counter() - t0}
    out = Path(os.environ.get("OUT") or Path(__file__).resolve().parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "lab_speed.json").write_text(json.dumps(res, indent=1))
    print(f"{'pe':6} {'mode':8} {'prec':5} {'kernel':10} {'steps':>5} {'steps/s':>8} {'loss':>8}")
    for r in rows:
        print(f"{r['pe']:6} {r['mode']:8} {r['precision']:5} {r['attention']:10} {r['steps']:5d} "
              f"{r['steps_per_s']:8.2f} {r['loss_last']:8.4f}")
    for c in checks:
        print(f"check {c['pe']:6} bf16/{c['attention_bf16']} vs fp32/reference: loss rel err {c['loss_rel_err']:.2e}, "
              f"worst grad rel err {c['worst_grad_rel_err']:.2e} ({'ok' if c['passed'] else 'FAILED'})")
    print(f"wrote {out / 'lab_speed.json'} in {res['wall_s']:.0f} s")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
