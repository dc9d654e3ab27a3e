"""KV policies on the GPU, checked before anything is timed (issue 18's acceptance on the GPU path).

    LENGTHWISE_MODEL_DIR=/tmp/lw-models PYTHONPATH=src python benchmarks/kv_gpu_check.py [POLICY ...]

SmolLM2-135M, 16 niah_single prompts at 2k (chat), the question kept out of compression, 32 greedy tokens:
  ratio 0 / full   snapkv:ratio=0 and kv=full give the same tokens as no policy (bf16, varlen, CUDA graph)
  graph == eager   each policy at 0.5 (think at 0.25: half its key channels; duo: half its heads streaming, from
                   kv-calibrate): the CUDA-graph decode of a compressed cache gives the eager decode's tokens
  bf16 vs fp32     each policy at 0.5 in bf16 (varlen) against float32 (reference kernels): token agreement
  fp8              "fp8" or "fp8+POLICY": the float8 cache (kv_dtype=fp8), graph == eager, and its tokens against
                   the same run with a bf16 cache
Writes $OUT/kv_gpu_check.json.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

import lengthwise as lw
from lengthwise.evaluation.backends import context_tokens, make_render
from lengthwise.generate import Sampling, generate_ids
from lengthwise.tasks import get_task

POLICIES = ["streaming", "knorm", "tova", "snapkv", "pyramidkv", "h2o", "a2sf", "random", "think", "adakv", "duo"]
RATIO = {"think": 0.25}  # ThinK's ratio counts half the key channels removed: 0.25 prunes half of them


def main():
    out = Path(os.environ.get("OUT") or Path(__file__).parent / "results")
    base = lw.load("smollm2-135m", device="cuda", dtype="bfloat16")
    render = make_render(base.tokenizer, chat=True)
    task = get_task("niah_single")
    samples = [task.make(render, 2048, 50.0, seed=100 + i) for i in range(16)]
    ids = [render(s.prompt, s.answer_prefix) for s in samples]
    ctx = [context_tokens(render, s, x) for s, x in zip(samples, ids)]

    def gen(lm, graph=None, spec="full", kv_dtype="auto"):  # one loaded model per dtype; the policy goes with each call
        pol = lw.kv.parse(spec)
        return generate_ids(lm.module, ids, 32, set(), Sampling(), lm.backend, cuda_graph=graph, policy=pol,
                            context=ctx if pol.evicts else None, kv_dtype=kv_dtype)

    def agree(a, b):
        return sum(x == y for p, q in zip(a, b) for x, y in zip(p, q)) / sum(len(p) for p in a)

    rows, ok = [], True
    ref = gen(base)
    for spec in ["full", "snapkv:ratio=0"]:
        got = gen(base, spec=spec)
        same = got == ref
        ok &= same
        rows.append({"check": "identical to no policy", "kv": spec, "ok": same})
        print(json.dumps(rows[-1]), flush=True)
    f32 = lw.load("smollm2-135m", device="cuda", dtype="float32", backend="reference")
    for p in sys.argv[1:] or POLICIES:
        if p.startswith("fp8"):  # the float8 cache, alone or under a policy
            pol = p.partition("+")[2]
            spec = f"{pol}:ratio={RATIO.get(pol, 0.5)}" if pol else "full"
            g, e = gen(base, graph=True, spec=spec, kv_dtype="fp8"), gen(base, graph=False, spec=spec, kv_dtype="fp8")
            b = gen(base, graph=False, spec=spec)
            row = {"check": "fp8 cache: graph == eager; fp8 vs bf16 cache", "kv": spec, "kv_dtype": "fp8",
                   "graph_eager_agree": agree(g, e), "fp8_bf16_agree": agree(e, b),
                   "first_token_fp8_bf16": sum(x[0] == y[0] for x, y in zip(e, b)) / len(e)}
            row["ok"] = row["graph_eager_agree"] == 1.0
            ok &= row["ok"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        spec = f"{p}:ratio={RATIO.get(p, 0.5)}"
        if p == "duo":  # its heads from its own probe (seeds apart from these prompts'), half of them streaming
            from lengthwise.kv.duo import calibrate
            out.mkdir(parents=True, exist_ok=True)
            calibrate(base, out / "duo_heads.json", length=2048, samples=8)
            spec = f"duo:heads=0.5,calibration={out / 'duo_heads.json'}"
        g, e = gen(base, graph=True, spec=spec), gen(base, graph=False, spec=spec)
        r = gen(f32, graph=False, spec=spec)
        row = {"check": "graph == eager; bf16 vs fp32 reference", "kv": spec, "graph_eager_agree": agree(g, e),
               "bf16_fp32_agree": agree(e, r), "first_token_bf16_fp32": sum(a[0] == b[0] for a, b in zip(e, r)) / len(e)}
        row["ok"] = row["graph_eager_agree"] == 1.0
        ok &= row["ok"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kv_gpu_check.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    print("ALL OK" if ok else "SOME FAILED", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
