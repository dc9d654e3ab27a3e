"""Host work of one packed prefill, counted: aten ops dispatched and Python calls made, for the engine on PYTHONPATH.

    PYTHONPATH=src python benchmarks/host_ops.py [--backend varlen] [--n 256]

Run once with the new src and once with the old one (`.oldsrc/src`) to see where a host-bound workload's extra
time comes from: counts, unlike times, do not move with the host's noise. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import json
import pstats
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def main():
    import lengthwise as lw
    from common import mix, random_ids
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    lm = lw.load("smollm2-135m", device="cuda" if cuda else "cpu", dtype="bfloat16" if cuda else "float32",
                 backend=args.backend)
    s = random_ids(mix("bimodal", args.n, seed=3), lm.config.vocab_size, seed=4, low=10)
    lm.next_token_logits(s)
    with Count() as c:
        lm.next_token_logits(s)
    prof = cProfile.Profile()
    prof.enable()
    lm.next_token_logits(s)
    prof.disable()
    st = pstats.Stats(prof)
    calls = sum(v[1] for v in st.stats.values())
    top = sorted(((v[1], f"{Path(k[0]).name}:{k[2]}") for k, v in st.stats.items() if "lengthwise" in k[0]), reverse=True)[:25]
    print(json.dumps({"engine": lw.__file__, "aten_ops": sum(c.ops.values()), "python_calls": calls,
                      "ops": c.ops.most_common(25), "lengthwise_calls": top}))


if __name__ == "__main__":
    main()
