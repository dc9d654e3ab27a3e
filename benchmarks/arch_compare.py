"""The architecture round's guard: the old engine and the new one, in the same run on the same GPU.

    python benchmarks/arch_compare.py --old .oldsrc/src     # .oldsrc: `git archive <old commit> src | tar -x -C .oldsrc`

Each version runs in its own process (two lengthwise packages cannot share one); both stay alive and take turns
in lockstep: every round times each workload on old and new back to back, the order alternating by round, so
the host's drift falls on both halves of a pair alike. A workload's ratio is the median over rounds of the pair's
ratio (with its quartiles); its throughputs are each version's median. Only the public API both versions share is used (lw.load, next_token_logits,
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


def build(workdir: Path, smoke: bool = False, only: str = "") -> tuple[dict, dict]:
    """This version's workloads, {name: (fn, units per call)}, and what each computes (for the agreement check)."""
    import torch

    import lengthwise as lw
    from lengthwise.generate import generate_ids
    from common import mix, random_ids

    dev, dt = ("cpu", "float32") if smoke else ("cuda", "bfloat16")
    B, new, n_short, n_long, n_enc = (4, 8, 8, 2, 16) if smoke else (64, 128, 256, 48, 4096)
    work, seen = {}, {}
    smol = lw.load("smollm2-135m", device=dev, dtype=dt)
    seqs = random_ids(mix("lognormal", B, seed=5), smol.config.vocab_size, seed=6, low=10)

    def gen():
        return generate_ids(smol.module, seqs, new, set(), backend=smol.backend, cuda_graph=not smoke)
    seen["generation"] = [x[:16] for x in gen()[:16]]
    work["generation smollm2 64x128 (output tokens/s)"] = (gen, B * new)
    models = [("smollm2", None)] + ([] if only == "host" else [("llama-1b", workdir / "llama-1b")])
    for name, folder in models:
        lm = smol if folder is None else lw.load(folder, device=dev, dtype=dt)
        for mix_name, n in ([("bimodal", n_short)] if folder is None else [("bimodal", n_short), ("long", n_long)]):
            s = random_ids(mix(mix_name, n, seed=3), lm.config.vocab_size, seed=4, low=10)
            seen[f"prefill {name} {mix_name}"] = lm.next_token_logits(s[:24]).float().argmax(-1).tolist()
            work[f"prefill {name} {mix_name} (tokens/s)"] = (
                lambda lm=lm, s=s: lm.next_token_logits(s, max_tokens_per_forward=65536), sum(map(len, s)))
    if only != "host":
        ids = random_ids(mix("lognormal", n_enc, seed=1), 30522, seed=2, low=2000)
        for residual in (None, "model"):
            enc = lw.load(workdir / "bert-base", device=dev, dtype=dt, residual=residual)
            seen[f"encoder {residual}"] = enc.embed_ids(ids[:32]).round(3).tolist()
            work[f"encoder bert-base mix a, residual={residual or 'float32'} (tokens/s)"] = (
                lambda enc=enc: enc.embed_ids(ids, max_tokens_per_forward=16384), sum(map(len, ids)))
    return work, seen


def serve(workdir: Path, smoke: bool, only: str) -> None:
    """One version's process, alive for the whole comparison: builds its workloads once, then times the one the
    driver names on each line of stdin ("<index> <repeats>") and answers with the median seconds of one call."""
    import numpy as np
    import torch

    import lengthwise as lw  # before common, which puts this checkout's src first on sys.path
    from common import timed
    if not smoke:  # the GPU's clocks up before the first number: 3 s of matmuls
        import time
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        t = time.perf_counter()
        while time.perf_counter() - t < 3:
            a @ a
        torch.cuda.synchronize()
        del a
    work, seen = build(workdir, smoke, only)
    names = list(work)
    for fn, _ in work.values():  # warm: CUDA graphs captured, kernels compiled, allocator grown
        fn()
    print("READY " + json.dumps({"engine": str(Path(lw.__file__).resolve().parents[1]), "names": names, "units": [work[k][1] for k in names], "seen": seen,
                                 "device": "cpu" if smoke else torch.cuda.get_device_name(),
                                 "torch": torch.__version__, "numpy": np.__version__}), flush=True)
    for line in sys.stdin:
        i, repeats = map(int, line.split())
        sec, _ = timed(work[names[i]][0], repeats=repeats, warmup=0)
        print(f"TIME {sec!r}", flush=True)


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


def plot(res: dict, path: Path) -> None:
    """new / old per workload, the median of the lockstep pairs with their quartiles, and the 3% bound."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = res["rows"]
    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [r["workload"].split(" (")[0] for r in rows]
    ax.barh(labels, [r["new_over_old"] for r in rows], color="#3b528b")
    ax.errorbar([r["new_over_old"] for r in rows], labels, fmt="none", ecolor="k", capsize=3,
                xerr=[[r["new_over_old"] - r["pair_ratio_q25"] for r in rows],
                      [r["pair_ratio_q75"] - r["new_over_old"] for r in rows]])
    ax.axvline(0.97, color="#fde725", ls="--", lw=2, label="0.97 (the 3% bound)")
    ax.axvline(1.0, color="k", lw=0.5)
    ax.set_xlabel(f"new / old throughput: median of {res['rounds']} lockstep pairs, bars q25-q75")
    ax.set_title(f"{res['device']}, {res['date']}, old = {res['old_commit']}", fontsize=10)
    ax.set_xlim(min(0.8, min(r["pair_ratio_q25"] for r in rows) - 0.02),
                max(1.1, max(r["pair_ratio_q75"] for r in rows) + 0.02))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="the old commit's src folder")
    ap.add_argument("--old-commit", default="1b08f97")
    ap.add_argument("--rounds", type=int, default=15, help="lockstep rounds: each times every workload once per version")
    ap.add_argument("--repeats", type=int, default=3, help="calls per turn (the turn's number is their median)")
    ap.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "benchmarks/results")))
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=SRC",
                    help="another version in the same lockstep (a src folder), reported against old and new")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--only", default="", help="host: generation and SmolLM2 prefill only")
    ap.add_argument("--taskset", default="", help="pin both versions' processes to these CPUs (taskset -c), e.g. 2-5")
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script, times nothing real")
    args = ap.parse_args()
    if args.serve:
        serve(Path(args.workdir), args.smoke, args.only)
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="arch_"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.only != "host":
        make_models(workdir, args.smoke)
    extra = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    srcs = {"old": str(Path(args.old).resolve()), "new": str(ROOT / "src")}
    srcs.update((v.split("=", 1)[0], str(Path(v.split("=", 1)[1]).resolve())) for v in args.variant)
    procs, info, logs = {}, {}, {}
    for v in srcs:  # all alive at once; one runs at a time while the others wait on their stdin
        path = os.pathsep.join([srcs[v]] + [p for p in extra if p and Path(p).resolve() != ROOT / "src"])
        pin = ["taskset", "-c", args.taskset] if args.taskset else []
        logs[v] = workdir / f"{v}.stderr"  # a file, not a pipe nobody reads until the end (a full pipe stalls it)
        procs[v] = subprocess.Popen(pin + [sys.executable, __file__, "--serve", "--workdir", str(workdir), "--old", args.old,
                                           "--only", args.only] + (["--smoke"] if args.smoke else []),
                                    env={**os.environ, "PYTHONPATH": path}, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=open(logs[v], "w"), text=True)

    def answer(v: str, tag: str) -> str:
        for line in procs[v].stdout:
            if line.startswith(tag + " "):
                return line[len(tag) + 1:]
        sys.exit(f"{v} failed:\n{logs[v].read_text()[-5000:]}")
    for v in procs:
        info[v] = json.loads(answer(v, "READY"))
    for v in procs:  # each process must run its own version's code
        if info[v]["engine"] != str(Path(srcs[v]).resolve()):
            sys.exit(f"the {v} process imported lengthwise from {info[v]['engine']}, not {srcs[v]}")
    names, units = info["new"]["names"], info["new"]["units"]
    for v in procs:
        if info[v]["names"] != names:
            sys.exit(f"the versions build different workloads: {v} {info[v]['names']} vs new {names}")
    agreement = {k: agree(info["old"]["seen"][k], info["new"]["seen"][k]) for k in info["new"]["seen"]}
    for v in procs:
        if v not in ("old", "new"):
            agreement[f"{v} vs old"] = agree(info["old"]["seen"], info[v]["seen"])
    # Lockstep: in every round each workload runs on every version back to back (order rotating by round), so
    # the host's drift, which moved single processes by up to 2.3x, falls on both halves of a pair alike.
    secs = {v: {k: [] for k in names} for v in procs}
    order = []
    for r in range(args.rounds):
        turn = list(procs)[r % len(procs):] + list(procs)[:r % len(procs)]
        turn = turn if r % 2 == 0 else turn[::-1]
        order.append(">".join(turn))
        for i, k in enumerate(names):
            for v in turn:
                procs[v].stdin.write(f"{i} {args.repeats}\n")
                procs[v].stdin.flush()
                secs[v][k].append(float(answer(v, "TIME")))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{k.split(' (')[0]} {secs['old'][k][-1] / secs['new'][k][-1]:.3f}" for k in names), flush=True)
    for p in procs.values():
        p.stdin.close()
        p.wait()
    def ratios(a: str, b: str, k: str) -> list[float]:
        """b's throughput over a's, one per round, sorted."""
        return sorted(x / y for x, y in zip(secs[a][k], secs[b][k]))

    rows = []
    for k, n in zip(names, units):
        ratios_k = ratios("old", "new", k)
        q = lambda f: ratios_k[min(len(ratios_k) - 1, int(f * len(ratios_k)))]  # noqa: E731
        o, w = statistics.median(secs["old"][k]), statistics.median(secs["new"][k])
        rows.append({"workload": k, "old": n / o, "new": n / w, "new_over_old": statistics.median(ratios_k),
                     "pair_ratio_q25": q(0.25), "pair_ratio_q75": q(0.75),
                     "within_3pct": statistics.median(ratios_k) >= 0.97,
                     "old_runs": [n / x for x in secs["old"][k]], "new_runs": [n / x for x in secs["new"][k]]})
    variants = {v: {k: {"over_old": statistics.median(ratios("old", v, k)),
                        "over_new": statistics.median(ratios("new", v, k)),
                        "runs": [n / x for x in secs[v][k]]} for k, n in zip(names, units)}
                for v in procs if v not in ("old", "new")}
    import datetime
    res = {"benchmark": "arch_compare", "method": "lockstep", "device": info["new"]["device"],
           "torch": info["new"]["torch"], "date": datetime.date.today().isoformat(), "old_commit": args.old_commit,
           "rounds": args.rounds, "order": order, "repeats": args.repeats, "only": args.only, "taskset": args.taskset,
           "agreement_old_vs_new": agreement, "rows": rows, "variants": variants,
           "variant_srcs": {v: srcs[v] for v in variants}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "arch_compare" + (f"_{args.only}" if args.only else "")
    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
    plot(res, out / f"{name}.png")
    print("agreement old vs new:", json.dumps(agreement))
    print("| workload | old | new | new/old (median of pairs) | q25-q75 |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workload']} | {r['old']:,.0f} | {r['new']:,.0f} | {r['new_over_old']:.3f} | "
              f"{r['pair_ratio_q25']:.3f}-{r['pair_ratio_q75']:.3f} |")
    for v, rs in variants.items():
        print(f"variant {v}: " + ", ".join(f"{k.split(' (')[0]} {x['over_old']:.3f} of old, {x['over_new']:.3f} of new"
                                           for k, x in rs.items()))


if __name__ == "__main__":
    main()
