"""Where the host's time goes in a short, host-bound SmolLM2 prefill: cProfile over repeated calls, and the
wall time per call, for whichever lengthwise is first on PYTHONPATH (run it once per tree to compare trees).

    PYTHONPATH=src python3 benchmarks/host_profile.py --label new --out results/host_new.json
    PYTHONPATH=.oldsrc/src python3 benchmarks/host_profile.py --label old --out results/host_old.json

The workload is arch_compare's: 256 prompts of the bimodal mix (16.6k tokens), next_token_logits.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--smoke", action="store_true", help="CPU, float32, 16 prompts")
    a = ap.parse_args()
    import torch
    import lengthwise as lw
    from common import mix, random_ids

    dev, dt, n = ("cpu", "float32", 16) if a.smoke else ("cuda", "bfloat16", 256)
    lm = lw.load("smollm2-135m", device=dev, dtype=dt)
    s = random_ids(mix("bimodal", n, seed=3), lm.config.vocab_size, seed=4, low=10)

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def call():
        lm.next_token_logits(s, max_tokens_per_forward=65536)
    for _ in range(5):
        call()
    sync()
    walls = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        call()
        sync()
        walls.append(time.perf_counter() - t)
    # host time to enqueue one call (no sync inside a prefill without a cache): the launch-bound part
    hosts = []
    for _ in range(a.repeats):
        sync()
        t = time.perf_counter()
        call()
        hosts.append(time.perf_counter() - t)
        sync()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(10):
        call()
    sync()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    res = {"label": a.label, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
           "tokens": sum(map(len, s)), "wall_ms_median": 1e3 * statistics.median(walls),
           "host_enqueue_ms_median": 1e3 * statistics.median(hosts), "profile_top30_tottime_10calls": buf.getvalue()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(a.label, f"wall {res['wall_ms_median']:.2f} ms, host enqueue {res['host_enqueue_ms_median']:.2f} ms")


if __name__ == "__main__":
    main()
