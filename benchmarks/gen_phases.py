"""Where generation's time goes, old engine against new, in the same run on the same GPU (issue 17's guard).

    python benchmarks/gen_phases.py --old .oldsrc/src [--rounds 2]

arch_compare's generation workload (SmolLM2, 64 lognormal prompts x 128 new tokens, greedy, CUDA-graph decode)
split into its phases, each version in its own processes (old, new, new, old, ...):
- total: generate_ids end to end (median of --repeats);
- setup + prefill: the cache and the packed prefill forward, to the first logits;
- capture: building the CUDA-graph decoder (two warm-up steps and the capture);
- replay: one graph replay, GPU time by CUDA events over 100 back-to-back replays;
- pick: choosing one step's tokens from [64, V] logits (the new Picker, the old sampler);
- eager step: one decode step outside the graph, its CUDA kernel count and summed kernel time (torch profiler);
- loop rest: total - setup/prefill - capture - 127 replays, what the host loop adds.
Before timing, each process records the greedy tokens; the driver checks that old and new agree.
Writes $OUT/gen_phases.json (or benchmarks/results/gen_phases.json); --smoke runs a tiny CPU check of the script.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def worker(repeats: int) -> dict:
    import torch

    import lengthwise as lw
    import lengthwise.generate as G
    from common import mix, random_ids

    dev = torch.device("cuda")
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    t = time.perf_counter()
    while time.perf_counter() - t < 3:  # clocks up first
        a @ a
    torch.cuda.synchronize()
    del a
    B, new = 64, 128
    smol = lw.load("smollm2-135m", device="cuda", dtype="bfloat16")
    model, backend = smol.module, smol.backend
    seqs = random_ids(mix("lognormal", B, seed=5), smol.config.vocab_size, seed=6, low=10)
    is_new = hasattr(G, "prefill")

    def gen():
        return G.generate_ids(model, seqs, new, set(), backend=backend, cuda_graph=True)

    def sync():
        torch.cuda.synchronize()

    def setup_prefill():
        if is_new:
            cache = G.new_cache(model, seqs, new)
            return cache, G.prefill(model, seqs, cache, G.Backend.of(backend))
        cfg = model.cfg
        batch = G.RaggedBatch.from_lists(seqs, dev, cfg.vocab_size)
        longest = max(map(len, seqs))
        cache = G.RaggedKVCache(cfg.n_layers, [len(p) + new for p in seqs], cfg.n_kv_heads, cfg.head_dim,
                                model.tok_embeddings.weight.dtype, dev,
                                far_keys=model.rotary.far_keys_for(longest, longest + new),
                                prompts=[len(p) for p in seqs])
        active = torch.arange(len(seqs), device=dev)
        slots, positions, meta = cache.plan(active, batch.cu_seqlens.diff().long())
        return cache, model(batch.tokens, positions, G.Step(meta, model.mask, backend, cache, slots),
                            out_rows=batch.last_index)

    def decoder(cache):
        if is_new:
            from lengthwise.graphs import GraphDecoder
            return GraphDecoder(model, cache, backend)
        return G.GraphDecoder(model, cache, backend)

    def picker():
        if is_new:
            return G.Picker(G.Sampling(), seqs, new, dev, None, model.cfg.vocab_size)
        return G.Sampling().sampler(dev)

    def wall(fn, n=repeats):
        fn()
        sync()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1e3

    with torch.inference_mode():
        tokens = [x[:16] for x in gen()[:16]]
        out = {"total_ms": wall(gen), "setup_prefill_ms": wall(setup_prefill)}
        cache, logits = setup_prefill()
        out["capture_ms"] = wall(lambda: decoder(cache), n=3)
        graph = decoder(cache)
        pick = picker()
        nxt = pick(logits)
        for _ in range(5):
            graph(nxt)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        reps = []
        for _ in range(5):
            e0.record()
            for _ in range(100):
                graph(nxt)
            e1.record()
            sync()
            reps.append(e0.elapsed_time(e1) / 100)
        out["replay_ms"] = statistics.median(reps)
        out["pick_ms"] = wall(lambda: pick(logits), n=50)
        # one eager decode step (what the graph holds): its kernels
        saved = cache.length.clone()

        def eager():
            slots, positions, meta = cache.plan_decode_all()
            r = model(nxt, positions, G.Step(meta, model.mask, backend, cache, slots))
            cache.length.copy_(saved)
            return r
        out["eager_step_ms"] = wall(eager, n=20)
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            eager()
            sync()
        ev = [e for e in prof.events() if e.device_type.name == "CUDA"]
        out["eager_step_kernels"] = len(ev)
        out["eager_step_kernel_ms"] = sum(e.device_time for e in ev) / 1e3
        names: dict = {}
        for e in ev:
            names[e.name[:60]] = names.get(e.name[:60], 0) + 1
        out["eager_step_kernel_names"] = dict(sorted(names.items(), key=lambda kv: -kv[1]))
    out["loop_rest_ms"] = out["total_ms"] - out["setup_prefill_ms"] - out["capture_ms"] - (new - 1) * out["replay_ms"]
    return {"phases": out, "tokens": tokens, "device": torch.cuda.get_device_name(), "torch": torch.__version__}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="the old commit's src folder")
    ap.add_argument("--rounds", type=int, default=2, help="processes per version")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "benchmarks/results")))
    ap.add_argument("--worker", action="store_true")
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.repeats)))
        return
    runs: dict = {"old": [], "new": []}
    order = [v for r in range(args.rounds) for v in (("old", "new") if r % 2 == 0 else ("new", "old"))]
    for v in order:
        src = str(Path(args.old).resolve()) if v == "old" else str(ROOT / "src")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, str(HERE)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
        p = subprocess.run([sys.executable, __file__, "--worker", "--old", args.old, "--repeats", str(args.repeats)],
                           env=env, capture_output=True, text=True)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not lines:
            sys.exit(f"{v} worker failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
        runs[v].append(json.loads(lines[-1][7:]))
        print(f"{v}: " + ", ".join(f"{k} {x:.3f}" for k, x in runs[v][-1]["phases"].items() if isinstance(x, float)), flush=True)
    agree = runs["old"][0]["tokens"] == runs["new"][0]["tokens"]
    keys = [k for k, x in runs["new"][0]["phases"].items() if isinstance(x, (int, float))]
    table = {k: {v: statistics.median(r["phases"][k] for r in runs[v]) for v in runs} for k in keys}
    res = {"benchmark": "gen_phases", "device": runs["new"][0]["device"], "torch": runs["new"][0]["torch"],
           "date": time.strftime("%Y-%m-%d"), "tokens_agree": agree, "phases": table, "runs": runs}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "gen_phases.json").write_text(json.dumps(res, indent=1))
    print(f"greedy tokens old == new: {agree}")
    print(f"{'phase':24s} {'old':>10s} {'new':>10s} {'new-old':>10s}")
    for k, d in table.items():
        print(f"{k:24s} {d['old']:10.3f} {d['new']:10.3f} {d['new'] - d['old']:10.3f}")
    for v in runs:
        print(v, "kernels:", json.dumps(runs[v][0]["phases"]["eager_step_kernel_names"])[:1500])


if __name__ == "__main__":
    main()
