"""One decode step of lengthwise, profiled: where the step's time goes, against the HBM roofline.

    GPU:    LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src python benchmarks/decode_profile.py
    smoke:  PYTHONPATH=src python benchmarks/decode_profile.py --smoke      (CPU, a tiny random Llama, < 1 min)

Workloads (--workloads, ';'-separated BxCTX[@positions]): SmolLM2 in bf16 at 64 x 7k, plain, and at 16 x 32k
with distance_cap:cap=2048 and with self_extend:group=24,window=1024 (issue 22, items 1 and 3). For each, B
prompts of CTX random ids run into a KV cache (generate.new_cache, generate.prefill); then the decode step that
gives every sequence one token is run again and again at that context (the cache's lengths put back after
each batch of steps):
  step_ms        CUDA events around back-to-back replays of the CUDA graph lengthwise decodes with (GraphDecoder)
  eager_step_ms  the same step launched op by op (what an evicting cache, or cuda_graph=False, runs)
  two_pass_step_ms, two_pass_eager_step_ms  a remap's step again with Backend.one_pass_remap off: its near and
                 far passes apart and merged (two_region.py), where the step above reads each key once
                 (triton_two_region.py; the GPU only: on the CPU both are the two-pass step)
  split_ms       the graph's kernel time per family (torch.profiler, CUDA activity). A kernel's family is read
                 from the code that launched it in the eager step (Python stacks: two_region.py and the far
                 keys' writes and tables are "two-region / far keys"), the graph's kernels matched to the eager
                 step's one to one; where they do not match, from the kernel's name alone (split_from says which)
  eager_split_ms the eager step's own split; two_region_ms its two-region step's near pass, far pass, merge and
                 far-key writes and tables apart; unlinked_kernels, per step, the kernels no launch was found for
  gaps_ms        step_ms less the kernels' time: the GPU idle inside the step
  roofline_ms    (weight bytes + every sequence's keys and values read once) / the copy bandwidth measured now
The graph's logits are checked against the eager step's before anything is timed. On the CPU (--smoke) the graph
and CUDA events are skipped: the step is timed on the host, the split is each op's own CPU time under the tracer
(slower than the untraced step), and there are no gaps to report.
Writes benchmarks/results/decode_profile.json (+ .png), or $OUT; --smoke writes decode_profile_smoke.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from common import copy_gbps, random_ids, save, sync, table, tiny_llama
from torch.profiler import ProfilerActivity, profile

import lengthwise as lw
from lengthwise.attention.layer import Step
from lengthwise.evaluation.grid import parse_lengths
from lengthwise.generate import new_cache, prefill
from lengthwise.graphs import GraphDecoder
from lengthwise.models.load import EMBEDDED, locate_embedded

WORKLOADS = "64x7k;16x32k@distance_cap:cap=2048;16x32k@self_extend:group=24,window=1024"
SMOKE = "4x200;2x600@distance_cap:cap=64;2x600@self_extend:group=4,window=32"  # the tiny Llama's trained 256
FAMILIES = ("attention decode", "two-region / far keys", "matmuls", "rope", "norm", "cache writes", "other")
BOUND = 2e-2  # graph against eager logits, ||diff|| / ||eager||: the same kernels, so in practice 0


def family(name: str, frames: list[str]) -> str:
    """A kernel's (or CPU op's) family from its name and the host frames around its launch, outermost first
    (python_function names read 'lengthwise/kv/cache.py(146): write_far'; modules 'nn.Module: RMSNorm_0')."""
    where, n = " | ".join(frames), name.lower()
    if "attention/two_region.py" in where or re.search(r"\): (write_far|far_[qk])\b", where):
        return "two-region / far keys"
    if any(f"lengthwise/attention/{f}.py" in where for f in ("__init__", "varlen", "reference", "cpu_flash", "split_kv",
                                                              "triton_decode", "triton_two_region")) \
            or any(k in n for k in ("flash", "fmha", "attn", "attention", "sdpa")):
        return "attention decode"  # the fused Triton step (RoPE + cache write + attention) counts here
    if "lengthwise/kv/" in where:
        return "cache writes"
    if "lengthwise/positions/" in where or "rope" in n:
        return "rope"
    if "norm" in n or re.search(r"nn\.Module: \w*Norm", where):
        return "norm"
    if any(k in n for k in ("gemm", "cutlass", "nvjet", "sm90_", "xmma", "cublas", "splitk", "aten::mm", "aten::addmm",
                            "aten::bmm", "aten::matmul", "aten::linear")) or "nn.Module: Linear" in where:
        return "matmuls"
    return "other"


def launches(trace: dict, cuda: bool) -> list[tuple[str, float, list[tuple[str, int]]]]:
    """(name, microseconds, host frames) per kernel in the order it ran; a frame is (name, event index), outermost
    first. GPU kernels come with the frames around the runtime call that launched them (matched by correlation
    id); on the CPU each aten op is one, with its own time (its duration less its child ops')."""
    ev = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    host = sorted((e for e in ev if e.get("cat") in ("cpu_op", "python_function", "user_annotation", "cuda_runtime",
                                                     "cuda_driver")), key=lambda e: (e["tid"], e["ts"], -e["dur"]))
    stack: list[dict] = []
    for i, e in enumerate(host):  # a stack sweep per thread: each host event's enclosing events
        while stack and (stack[-1]["tid"] != e["tid"] or stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]):
            stack.pop()
        e["_up"], e["_i"], e["_self"] = [(u["name"], u["_i"]) for u in stack], i, e["dur"]
        if e["cat"] == "cpu_op":
            parent = next((u for u in reversed(stack) if u["cat"] == "cpu_op"), None)
            if parent is not None:
                parent["_self"] -= e["dur"]
        stack.append(e)
    if not cuda:
        return [(e["name"], e["_self"], e["_up"]) for e in sorted(host, key=lambda e: e["ts"]) if e["cat"] == "cpu_op"]
    by_corr = {e["args"]["correlation"]: e for e in host if "correlation" in e.get("args", {})}
    dev = sorted((e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")), key=lambda e: e["ts"])
    return [(k["name"], k["dur"], by_corr.get(k.get("args", {}).get("correlation"), {}).get("_up", [])) for k in dev]


def traced(fn, n: int, cuda: bool) -> list[tuple[str, float, list[tuple[str, int]]]]:
    """launches() of n calls of fn, with Python stacks (the frames)."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts, with_stack=True) as prof:
        for _ in range(n):
            fn()
        sync()
    with tempfile.TemporaryDirectory() as d:
        prof.export_chrome_trace(f"{d}/trace.json")
        return launches(json.loads(Path(f"{d}/trace.json").read_text()), cuda)


def labels(kernels: list) -> list[tuple[str, str | None]]:
    """(family, part of the two-region step or None) per kernel. Inside one call of attend_two_region, the
    kernels under its first attend() are the near pass (attention decode, as a plain step's), under its second the
    far pass; the rest there is the merge. The one-pass kernel (triton_two_region.py) is attention decode, its
    part "one pass (near + far)"."""
    out, passes = [], defaultdict(list)  # two-region call -> its attend() calls, in order
    for name, _, frames in kernels:
        names = [f for f, _ in frames]
        fam = family(name, names)
        part = None
        call = next((i for f, i in frames if f.endswith(": attend_two_region")), None)
        if any(f.endswith(": two_region_decode") for f in names):  # the one-pass kernel: both regions at once
            part = "one pass (near + far)"
        elif call is not None:
            attend = next((i for f, i in frames if "lengthwise/attention/__init__.py(" in f and f.endswith(": attend")
                           and i > call), None)
            if attend is not None and attend not in passes[call]:
                passes[call].append(attend)
            part = "merge" if attend is None else ("near pass" if passes[call].index(attend) == 0 else "far pass")
            fam = "attention decode" if part == "near pass" else fam
        elif fam == "two-region / far keys":
            part = "far keys (writes, tables)"
        out.append((fam, part))
    return out


def split(eager: list, graph: list | None, n: int) -> dict:
    """Per-step ms by family (and by part of the two-region step), the top kernels, and where the families came
    from: the graph's kernels take the eager step's labels where the two ran the same kernels in the same order."""
    marks = labels(eager)
    if not graph:  # the CPU, or a profiler that does not see into graph replays
        runs, source = eager, "the eager step's kernels, families from their launch sites"
    elif [k[0] for k in graph] == [k[0] for k in eager]:
        runs, source = graph, "the graph's kernels, families from the eager step's launch sites"
    else:
        runs, source = graph, "the graph's kernels, families from kernel names (not the eager step's one to one)"
        marks = [(family(name, []), None) for name, _, _ in graph]
    fams: dict[str, float] = defaultdict(float)
    parts: dict[str, float] = defaultdict(float)
    top: dict[tuple[str, str], list] = {}
    for (name, us, _), (f, part) in zip(runs, marks):
        fams[f] += us / 1e3 / n
        if part:
            parts[part] += us / 1e3 / n
        t = top.setdefault((name, f), [0.0, 0])
        t[0], t[1] = t[0] + us / 1e3 / n, t[1] + 1
    tops = sorted(({"kernel": k[:90], "family": f, "ms": v[0], "per_step": v[1] / n} for (k, f), v in top.items()),
                  key=lambda r: -r["ms"])[:12]
    return {"split_ms": {f: fams[f] for f in FAMILIES if f in fams}, "two_region_ms": dict(parts),
            "split_from": source, "top_kernels": tops}


def per_step_ms(fn, reset, k: int, rounds: int, cuda: bool) -> float:
    """Median over rounds of (k back-to-back calls of fn) / k; reset() puts the cache back after each round."""
    times = []
    for _ in range(rounds):
        sync()
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
        t = time.perf_counter()
        for _ in range(k):
            fn()
        if cuda:
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / k)
        else:
            times.append((time.perf_counter() - t) * 1e3 / k)
        reset()
    return statistics.median(times)


def decoder(lm, seqs: list[list[int]], room: int, graph: bool, backend=None):
    """The prompts prefilled into a cache with room for `room` more tokens each; -> (cache, eager step, CUDA-graph
    step or None), each step giving every sequence one token (the same token, 1) and returning [B, V] logits."""
    m, backend = lm.module, backend or lm.backend
    cache = new_cache(m, seqs, room)
    prefill(m, seqs, cache, backend)
    return (cache, *steps(lm, cache, graph, backend))


def steps(lm, cache, graph: bool, backend):
    """(eager step, CUDA-graph step or None) over a prefilled cache, on that Backend."""
    m = lm.module
    tok = torch.ones(cache.length.numel(), dtype=torch.long, device=cache.length.device)

    def eager():  # what GraphDecoder captures
        slots, positions, meta = cache.plan_decode_all()
        return m(tok, positions, Step(meta, m.mask, backend, cache, slots))
    if not graph:
        return eager, None
    g = GraphDecoder(m, cache, backend)
    g.tokens.copy_(tok)

    def replay():  # the graph alone: its input tokens stay the same
        g.graph.replay()
        return g.logits
    return eager, replay


def weight_bytes(lm) -> int:
    """Bytes of weights a decode step reads: all of them, less an untied embedding table (B rows of it)."""
    m = lm.module
    total = sum(p.numel() * p.element_size() for p in m.parameters())
    return total if m.output is None else total - m.tok_embeddings.weight.numel() * m.tok_embeddings.weight.element_size()


def workload(folder, spec: str, dev, dtype, bw: float, k: int, rounds: int) -> dict:
    shape, _, positions = spec.partition("@")
    B, ctx = shape.split("x")
    B, ctx = int(B), parse_lengths(ctx)[0]
    cuda = dev.type == "cuda"
    lm = lw.load(folder, device=dev, dtype=dtype, **({"positions": positions} if positions else {}))
    seqs = random_ids([ctx] * B, lm.config.vocab_size, seed=7, low=10)
    with torch.inference_mode():
        cache, eager, graph = decoder(lm, seqs, k + 2, cuda)
        saved = cache.length.clone()

        def reset():
            cache.length.copy_(saved)
        want = eager().float()
        reset()
        err = 0.0
        if graph is not None:
            got = graph().float()
            reset()
            err = ((got - want).norm() / want.norm()).item()
            assert err <= BOUND, f"{spec}: CUDA-graph decode step off the eager one by {err:.3g}"
        eager_ms = per_step_ms(eager, reset, k, rounds, cuda)
        step_ms = per_step_ms(graph, reset, k, rounds, cuda) if graph is not None else eager_ms
        two_pass = {}
        if lm.module.rotary.far_needed:  # the same cache, the remap's decode step as two passes (one_pass_remap off)
            e2, g2 = steps(lm, cache, cuda, dataclasses.replace(lm.backend, one_pass_remap=False))
            reset()
            two_pass = {"two_pass_eager_step_ms": per_step_ms(e2, reset, k, rounds, cuda)}
            two_pass["two_pass_step_ms"] = per_step_ms(g2, reset, k, rounds, cuda) if g2 is not None \
                else two_pass["two_pass_eager_step_ms"]
            del e2, g2
        n = min(k, 5)
        launched = traced(eager, n, cuda)
        reset()
        replayed = traced(graph, n, cuda) if graph is not None else None
        reset()
    where = split(launched, replayed, n)
    if replayed is not None:  # the eager step's own view: its families and passes whatever the graph's kernels were
        mine = split(launched, None, n)
        where |= {"eager_split_ms": mine["split_ms"], "two_region_ms": mine["two_region_ms"]}
    where["unlinked_kernels"] = sum(not frames for _, _, frames in launched) // n  # per step: labelled by name only
    kernels_ms = sum(where["split_ms"].values())
    cfg = lm.config
    kv = B * ctx * cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * lm.dtype.itemsize
    w = weight_bytes(lm)
    roof = (w + kv) / (bw * 1e9) * 1e3
    row = {"workload": f"{B}x{shape.split('x')[1]}" + (f" {positions}" if positions else " plain"), "batch": B,
           "context": ctx, "positions": positions or "rope", "far_keys": cache.k_far is not None,
           "check_graph_vs_eager": err, "step_ms": step_ms, "eager_step_ms": eager_ms, "kernels_ms": kernels_ms,
           "gaps_ms": step_ms - kernels_ms if cuda else None, "roofline_ms": roof, "pct_of_hbm_roofline": roof / step_ms * 100,
           "weight_bytes": w, "kv_bytes": kv, "cache_bytes": cache.nbytes, **two_pass, **where}
    print(f"{row['workload']}: step {step_ms:.3f} ms (eager {eager_ms:.3f}), kernels {kernels_ms:.3f}, roofline "
          f"{roof:.3f} ms ({row['pct_of_hbm_roofline']:.0f}%); {where['split_from']}", flush=True)
    if two_pass:
        print(f"  two-pass remap decode (one_pass_remap off): step {two_pass['two_pass_step_ms']:.3f} ms "
              f"(eager {two_pass['two_pass_eager_step_ms']:.3f})", flush=True)
    if where["two_region_ms"]:
        print("  two-region step: " + ", ".join(f"{k} {v:.3f} ms" for k, v in where["two_region_ms"].items()), flush=True)
    del lm, cache, eager, graph
    if cuda:
        torch.cuda.empty_cache()
    return row


def family_table(rows: list[dict]) -> str:
    """Families down, workloads across: ms per step, then the gaps and the step."""
    cols = [r["workload"] for r in rows]
    lines = [{"family": f, **{r["workload"]: r["split_ms"].get(f, 0.0) for r in rows}} for f in FAMILIES]
    lines += [{"family": "gaps (GPU idle in the step)", **{r["workload"]: r["gaps_ms"] for r in rows}},
              {"family": "step", **{r["workload"]: r["step_ms"] for r in rows}},
              {"family": "HBM roofline", **{r["workload"]: r["roofline_ms"] for r in rows}}]
    return table(lines, ["family"] + cols)


def plot(plt, rows):
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.8 * len(rows)))
    colors = plt.cm.tab10.colors
    for i, r in enumerate(rows):
        left = 0.0
        for j, f in enumerate(FAMILIES + ("gaps",)):
            v = r["split_ms"].get(f, 0.0) if f != "gaps" else max(r["gaps_ms"] or 0.0, 0.0)
            ax.barh(i, v, left=left, color=colors[j % 10], label=f if i == 0 else None)
            left += v
        ax.plot([r["roofline_ms"]] * 2, [i - 0.4, i + 0.4], color="black", lw=2, label="HBM roofline" if i == 0 else None)
    ax.set_yticks(range(len(rows)), [r["workload"] for r in rows], fontsize=8)
    ax.set_xlabel("ms per decode step")
    ax.legend(fontsize=7, ncols=3, loc="lower right")
    return fig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default=None, help=f"';'-separated BxCTX[@positions] (default {WORKLOADS!r})")
    ap.add_argument("--model", default="smollm2-135m", help="an embedded name or a folder")
    ap.add_argument("--steps", type=int, default=20, help="back-to-back steps per timing round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="CPU, a tiny random Llama and small shapes: checks the script")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    dev, dtype = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    with tempfile.TemporaryDirectory() as d:
        if args.smoke:
            folder, specs, k, rounds = tiny_llama(Path(d) / "tiny-llama", context=256), args.workloads or SMOKE, 3, 2
        else:
            folder = locate_embedded(EMBEDDED[args.model]) if args.model in EMBEDDED else Path(args.model)
            specs, k, rounds = args.workloads or WORKLOADS, args.steps, args.rounds
        bw = copy_gbps(dev)
        print(f"{dev}: copy {bw:.0f} GB/s", flush=True)
        rows = [workload(folder, s, dev, dtype, bw, k, rounds) for s in specs.split(";")]
    print(table(rows, ["workload", "step_ms", "eager_step_ms", "two_pass_step_ms", "kernels_ms", "gaps_ms",
                       "roofline_ms", "pct_of_hbm_roofline", "far_keys"]))
    print()
    print(family_table(rows))
    remaps = [r for r in rows if r["two_region_ms"]]
    if remaps:  # the two-region step's parts, from the eager step's kernels
        parts = list(dict.fromkeys(p for r in remaps for p in r["two_region_ms"]))
        print()
        print(table([{"two-region part": p, **{r["workload"]: r["two_region_ms"].get(p, 0.0) for r in remaps}}
                     for p in parts], ["two-region part"] + [r["workload"] for r in remaps]))
    name = "decode_profile_smoke" if args.smoke else "decode_profile"
    out = save(name, rows, {"model": "tiny-llama" if args.smoke else args.model, "dtype": str(dtype)[6:],
                            "copy_gbps": bw, "steps": k, "rounds": rounds}, plot)
    print(f"wrote {out}/{name}.json and .png")


if __name__ == "__main__":
    main()
