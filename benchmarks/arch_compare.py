"""The architecture round's guard: the old engine and the new one, in the same run on the same GPU.

    python benchmarks/arch_compare.py --old .oldsrc/src     # .oldsrc: `git archive <old commit> src | tar -x -C .oldsrc`

Each version runs in its own process (two lengthwise packages cannot share one), in the order old, new, new,
old, ... so drift in the machine falls on both alike; each workload's number is the median over that version's
processes of their medians. Only the public API both versions share is used (lw.load, next_token_logits,
embed_ids, generate.generate_ids), so the very same workload code times both. Before timing, each process
records what it computed (greedy tokens, prefill argmaxes, embeddings) and the driver checks that old and new
agree. Workloads are the committed ones (docs/benchmarks.md): generation (SmolLM2, 64 lognormal prompts x 128
new tokens, CUDA-graph decode), prefill (random 1.1B Llama, mixes bimodal and long; SmolLM2 bimodal) and the
bert-base encoder (mix a, default float32 stream and residual="model"). Target: new / old >= 0.97 everywhere.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def worker(workdir: Path, repeats: int, smoke: bool = False, only: str = "") -> dict:
    import numpy as np
    import torch

    import lengthwise as lw
    from lengthwise.generate import generate_ids
    from common import mix, random_ids, timed

    dev, dt = ("cpu", "float32") if smoke else ("cuda", "bfloat16")
    if not smoke:  # the GPU's clocks up before the first number: 3 s of matmuls
        import time
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        t = time.perf_counter()
        while time.perf_counter() - t < 3:
            a @ a
        torch.cuda.synchronize()
        del a
    B, new, n_short, n_long, n_enc = (4, 8, 8, 2, 16) if smoke else (64, 128, 256, 48, 4096)
    out, seen = {}, {}
    smol = lw.load("smollm2-135m", device=dev, dtype=dt)
    lens = mix("lognormal", B, seed=5)
    seqs = random_ids(lens, smol.config.vocab_size, seed=6, low=10)

    def gen():
        return generate_ids(smol.module, seqs, new, set(), backend=smol.backend, cuda_graph=not smoke)
    seen["generation"] = [x[:16] for x in gen()[:16]]
    if only == "host":  # the host-bound workloads alone: generation and SmolLM2's short prefill
        s = random_ids(mix("bimodal", n_short, seed=3), smol.config.vocab_size, seed=4, low=10)
        seen["prefill smollm2 bimodal"] = smol.next_token_logits(s[:24]).float().argmax(-1).tolist()
        for _ in range(2):
            sec, _ = timed(gen, repeats=repeats)
            out["generation smollm2 64x128 (output tokens/s)"] = max(out.get("generation smollm2 64x128 (output tokens/s)", 0), B * new / sec)
            sec, _ = timed(lambda: smol.next_token_logits(s, max_tokens_per_forward=65536), repeats=repeats)
            out["prefill smollm2 bimodal (tokens/s)"] = max(out.get("prefill smollm2 bimodal (tokens/s)", 0), sum(map(len, s)) / sec)
        return {"throughput": out, "seen": seen, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                "numpy": np.__version__}
    sec, _ = timed(gen, repeats=repeats)
    out["generation smollm2 64x128 (output tokens/s)"] = B * new / sec

    for name, folder in [("smollm2", None), ("llama-1b", workdir / "llama-1b")]:
        lm = smol if folder is None else lw.load(folder, device=dev, dtype=dt)
        for mix_name, n in ([("bimodal", n_short)] if folder is None else [("bimodal", n_short), ("long", n_long)]):
            s = random_ids(mix(mix_name, n, seed=3), lm.config.vocab_size, seed=4, low=10)
            seen[f"prefill {name} {mix_name}"] = lm.next_token_logits(s[:24]).float().argmax(-1).tolist()
            sec, _ = timed(lambda: lm.next_token_logits(s, max_tokens_per_forward=65536), repeats=repeats)
            out[f"prefill {name} {mix_name} (tokens/s)"] = sum(len(x) for x in s) / sec
        if folder is not None:
            del lm
            if not smoke:
                torch.cuda.empty_cache()

    ids = random_ids(mix("lognormal", n_enc, seed=1), 30522, seed=2, low=2000)
    for residual in (None, "model"):
        enc = lw.load(workdir / "bert-base", device=dev, dtype=dt, residual=residual)
        seen[f"encoder {residual}"] = enc.embed_ids(ids[:32]).round(3).tolist()
        sec, _ = timed(lambda: enc.embed_ids(ids, max_tokens_per_forward=16384), repeats=repeats)
        out[f"encoder bert-base mix a, residual={residual or 'float32'} (tokens/s)"] = sum(map(len, ids)) / sec
    return {"throughput": out, "seen": seen, "device": "cpu" if smoke else torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "numpy": np.__version__}


def make_models(workdir: Path, smoke: bool = False) -> None:
    import shutil

    import torch
    import transformers
    from lengthwise.models.load import resolve
    if not (workdir / "llama-1b").exists():
        size = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2) if smoke else
                dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22))
        cfg = transformers.LlamaConfig(vocab_size=32000, **size, num_attention_heads=32, num_key_value_heads=4,
                                       max_position_embeddings=8192, rope_theta=10000.0, tie_word_embeddings=False)
        torch.manual_seed(0)
        with torch.device("cpu" if smoke else "cuda"):
            m = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
        m.save_pretrained(workdir / "llama-1b", safe_serialization=True)
        del m
    if not (workdir / "bert-base").exists():
        torch.manual_seed(0)
        size = (dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128) if smoke else
                dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072))
        m = transformers.BertModel(transformers.BertConfig(**size), add_pooling_layer=False)
        m.save_pretrained(workdir / "bert-base", safe_serialization=True)
        minilm = resolve("minilm-l6")
        for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (minilm / f).exists():
                shutil.copy(minilm / f, workdir / "bert-base" / f)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def agree(a, b) -> float:
    """The share of equal leaves of two nested lists (tokens, argmaxes, rounded embeddings)."""
    if isinstance(a, list):
        pairs = [agree(x, y) for x, y in zip(a, b)]
        return sum(pairs) / max(len(pairs), 1)
    return float(a == b) if not isinstance(a, float) else float(abs(a - b) <= 2e-3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="the old commit's src folder")
    ap.add_argument("--old-commit", default="1b08f97")
    ap.add_argument("--rounds", type=int, default=2, help="processes per version")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "benchmarks/results")))
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--only", default="", help="host: generation and SmolLM2 prefill only")
    ap.add_argument("--taskset", default="", help="pin every worker to these CPUs (taskset -c), e.g. 2-5")
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script, times nothing real")
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(Path(args.workdir), args.repeats, args.smoke, args.only)), flush=True)
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="arch_"))
    if args.only != "host":
        make_models(workdir, args.smoke)
    extra = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    srcs = {"old": str(Path(args.old).resolve()), "new": str(ROOT / "src")}
    order = [v for r in range(args.rounds) for v in (("old", "new") if r % 2 == 0 else ("new", "old"))]
    runs: dict[str, list] = {"old": [], "new": []}
    for v in order:
        path = os.pathsep.join([srcs[v]] + [p for p in extra if p and Path(p).resolve() != ROOT / "src"])
        env = {**os.environ, "PYTHONPATH": path}
        pin = ["taskset", "-c", args.taskset] if args.taskset else []
        p = subprocess.run(pin + [sys.executable, __file__, "--worker", "--workdir", str(workdir), "--old", args.old,
                                  "--repeats", str(args.repeats), "--only", args.only]
                           + (["--smoke"] if args.smoke else []), env=env, capture_output=True, text=True)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            sys.exit(f"{v} worker failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
        runs[v].append(json.loads(line[0][7:]))
        print(f"{v}: " + ", ".join(f"{k.split(' (')[0]} {x:,.0f}" for k, x in runs[v][-1]["throughput"].items()), flush=True)
    agreement = {k: agree(runs["old"][0]["seen"][k], runs["new"][0]["seen"][k]) for k in runs["new"][0]["seen"]}
    rows = []
    for k in runs["new"][0]["throughput"]:
        o = statistics.median(r["throughput"][k] for r in runs["old"])
        n = statistics.median(r["throughput"][k] for r in runs["new"])
        rows.append({"workload": k, "old": o, "new": n, "new_over_old": n / o, "within_3pct": n / o >= 0.97,
                     "old_runs": [r["throughput"][k] for r in runs["old"]],
                     "new_runs": [r["throughput"][k] for r in runs["new"]]})
    import datetime
    res = {"benchmark": "arch_compare", "device": runs["new"][0]["device"], "torch": runs["new"][0]["torch"],
           "date": datetime.date.today().isoformat(), "old_commit": args.old_commit, "order": order,
           "repeats": args.repeats, "only": args.only, "taskset": args.taskset, "agreement_old_vs_new": agreement, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "arch_compare" + (f"_{args.only}" if args.only else "")
    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.barh([r["workload"].split(" (")[0] for r in rows], [r["new_over_old"] for r in rows])
        ax.axvline(0.97, color="r", ls="--", label="0.97 (the 3% bound)")
        ax.axvline(1.0, color="k", lw=0.5)
        ax.set_xlabel(f"new / old throughput ({res['device']}, {res['date']})")
        ax.set_xlim(0.8, max(1.1, max(r["new_over_old"] for r in rows) + 0.02))
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
    except ImportError:
        pass
    print("agreement old vs new:", json.dumps(agreement))
    print("| workload | old | new | new/old |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['workload']} | {r['old']:,.0f} | {r['new']:,.0f} | {r['new_over_old']:.3f} |")


if __name__ == "__main__":
    main()
