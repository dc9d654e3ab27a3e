"""KV caches and the policies that decide what they keep.

    lw.load("smollm2-135m", kv="window:sinks=4,recent=512")
    lw.load("smollm2-135m", kv="snapkv:ratio=0.5")       # kvpress's compression_ratio: 50% removed
    lw.load("smollm2-135m", kv=lw.kv.H2O(tokens=1024, every=1))
    lw.load("smollm2-135m", kv="snapkv:ratio=0.5", kv_dtype="fp8")  # float8 keys and values, any policy
    lw.load("smollm2-135m", kv="think:ratio=0.25")      # ThinK: half the key channels, stored at half width
    lw.load("smollm2-135m", kv="snapkv:ratio=0.5+think:ratio=0.25")  # both (kvpress's ComposedPress)
    lw.load("smollm2-135m", kv="adakv:ratio=0.5")        # Ada-KV: budgets per kv head, a region per head
    lw.load("smollm2-135m", kv="duo:heads=0.5,calibration=heads.json")  # DuoAttention (lengthwise kv-calibrate)

`RaggedKVCache` gives each sequence a region of its own size; a `Policy` scores the cached tokens and the
cache keeps the best within a budget (kv/policy.py). POLICIES lists them by name; KV_DTYPES what the cache
may store keys and values in.
"""
from __future__ import annotations

from .. import options
from ..errors import LengthwiseError
from .cache import KV_DTYPES, RaggedKVCache, check_kv_dtype
from .composed import Composed
from .headwise import HeadwiseKVCache
from .policy import Budget, Full, Policy, compress
from .a2sf import A2SF
from .adakv import AdaKV
from .duo import Duo
from .h2o import H2O
from .knorm import Knorm
from .pyramidkv import PyramidKV
from .random import Random
from .snapkv import SnapKV
from .streaming import Streaming
from .think import ThinK
from .tova import TOVA
from .window import Window

POLICIES: dict[str, type[Policy]] = {c.name: c for c in (Full, Window, Streaming, H2O, A2SF, TOVA, SnapKV,
                                                          PyramidKV, Knorm, Random, ThinK, AdaKV, Duo)}


def parse(spec: "str | Policy | None") -> Policy:
    """'window:sinks=4,recent=256' -> the policy; None -> Full; 'snapkv:ratio=0.5+think:ratio=0.25' -> both."""
    if spec is None:
        return Full()
    if isinstance(spec, Policy):
        return spec
    name, _, opts = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if name.strip() == "full" and opts.strip():
        raise LengthwiseError(f"KV policy 'full' keeps every token and takes no options, got {spec!r}: write 'full', "
                              "or name a policy with a budget, e.g. 'snapkv:ratio=0.5'")
    parts = spec.split("+") if isinstance(spec, str) else [spec]
    for part in parts:
        _check_budget_given(part)
    if len(parts) > 1:  # a token policy with think (kv/composed.py)
        return Composed.of([options.parse(part, POLICIES, "KV policy") for part in parts])
    return options.parse(spec, POLICIES, "KV policy")


def _check_budget_given(spec) -> None:
    """A budget a spec writes out is checked as written: ratio=-1 and tokens=0 are the fields' "not given"
    defaults, so the policy itself cannot tell them from an omitted budget."""
    if not isinstance(spec, str):
        return
    name, parts = options.split(spec)
    if name not in POLICIES:
        return  # the parser names the unknown policy
    for part in parts:
        key, _, text = (x.strip() for x in part.partition("="))
        try:
            value = float(text)
        except ValueError:
            continue  # the parser names what it cannot read
        if key == "ratio" and value < 0:
            raise LengthwiseError(f"{name}: ratio must be in [0, 1) (the fraction removed), got {text}")
        if key == "tokens" and value < 1:
            raise LengthwiseError(f"{name}: tokens (the count kept) must be >= 1, got {text} (tokens=N, N >= 1; "
                                  "ratio=0 is the full cache)")


__all__ = ["RaggedKVCache", "KV_DTYPES", "check_kv_dtype", "Policy", "Budget", "Full", "Window", "Streaming", "H2O", "A2SF", "TOVA", "SnapKV",
           "PyramidKV", "Knorm", "Random", "ThinK", "AdaKV", "Duo", "Composed", "HeadwiseKVCache", "POLICIES", "parse", "compress"]
