"""LongRoPE-style factor files for a head_dim of 64 (SmolLM2): lambda_i = s^(i / 31), i = 0..31.

LongRoPE finds its per-dimension factors by evolutionary search; this is the simplest shape that
search converges towards (no stretch for the fastest rotations, the full s for the slowest, monotone
between). Rerun: python benchmarks/longrope_factors/make.py
"""
import json
from pathlib import Path

for s in (8, 16, 32):
    n = 32
    factors = [round(s ** (i / (n - 1)), 6) for i in range(n)]
    (Path(__file__).parent / f"geometric_x{s}.json").write_text(json.dumps(factors) + "\n")
