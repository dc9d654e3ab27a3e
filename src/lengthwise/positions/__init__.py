"""Position schemes: how a token's index becomes a rotation, one small dataclass per file.

RoPE scalings change the frequencies (linear, ntk, dynamic_ntk, yarn, longrope, giraffe, llama3);
remaps change the positions far keys are seen at (self_extend, distance_cap, string); attention
patterns choose which far keys are seen at all (sinks, lambda). Every scheme plugs into every RoPE
model and backend through `Rotary`; pick one with `lw.load(..., positions="yarn:factor=4")` or
`--positions yarn:factor=4`.
"""
from __future__ import annotations

import json

from .. import options
from ..errors import LengthwiseError
from .distance_cap import DistanceCap
from .dynamic_ntk import DynamicNTK
from .giraffe import Giraffe
from .lambda_shape import LambdaShape
from .linear import Linear
from .llama3 import Llama3
from .longrope import LongRoPE
from .ntk import NTK
from .rope import RoPE, Remap, Rotary, Rotation, Tables, apply_rope
from .self_extend import SelfExtend
from .sinks import Sinks
from .string_shift import STRING
from .yarn import YaRN

SCHEMES: dict[str, type[RoPE]] = {c.name: c for c in (
    RoPE, Linear, NTK, DynamicNTK, YaRN, LongRoPE, Giraffe, Llama3, SelfExtend, DistanceCap, STRING, Sinks, LambdaShape)}


def parse(spec: "str | RoPE | None") -> RoPE:
    """'yarn:factor=4' or 'self_extend:group=8,window=1024' -> the scheme; None or 'none' -> plain RoPE.

    List values are written a/b/c, or @file.json for a JSON list (lengthwise.options).
    """
    if spec is None:
        return RoPE()
    if isinstance(spec, RoPE):
        return spec
    name, parts = options.split(str(spec))
    cls = SCHEMES.get(name)
    if cls is None:
        raise LengthwiseError(f"unknown position scheme {name!r}: choose one of {', '.join(SCHEMES)}")
    kw = options.parse_kwargs(name, parts, cls, example="4")
    raw = dict(p.partition("=")[::2] for p in parts)
    if "factors" in kw and raw.get("factors", "").strip().startswith("@") and "source" in options.option_types(cls):
        kw["source"] = raw["factors"].strip()[1:]
    return cls(**kw)


# HF config "rope_scaling" / "rope_parameters" -> our scheme (what the checkpoint was trained with)
def from_hf(rope: dict | None, head_dim: int, max_pos: int | None = None, original: int | None = None) -> RoPE | None:
    """max_pos and original: the config's max_position_embeddings and top-level original length, if any."""
    if not rope:
        return None
    if not isinstance(rope, dict):
        raise LengthwiseError(f"RoPE scaling must be a JSON object like {{\"rope_type\": \"yarn\", \"factor\": 4.0}}, got {rope!r}")
    try:
        scheme = _from_hf(rope, head_dim, max_pos, original)
    except (KeyError, TypeError, ValueError) as e:
        raise LengthwiseError(f"cannot read RoPE scaling {json.dumps(rope)[:200]}: {type(e).__name__} {e} "
                              "(HF's fields: rope_type, factor, and the type's own parameters)") from None
    if scheme is not None:
        scheme.check(max_pos or 0)  # a factor of -1 is as wrong in a config or --hf-rope as in --positions
    return scheme


def _from_hf(rope: dict, head_dim: int, max_pos: int | None, original: int | None) -> RoPE | None:
    kind = rope.get("rope_type") or rope.get("type") or "default"
    orig = int(original or rope.get("original_max_position_embeddings") or 0)
    f = rope.get("factor")
    if f is None and kind in ("yarn", "longrope") and orig and max_pos:
        f = max_pos / orig  # HF derives it so when the config leaves it out
    if kind == "default":
        return None
    if kind == "linear":
        return Linear(float(f))
    if kind == "dynamic":
        return DynamicNTK(float(f))
    if kind == "yarn":
        return YaRN(float(f), float(rope.get("beta_fast") or 32), float(rope.get("beta_slow") or 1),
                    _yarn_attn(rope, float(f)), orig, bool(rope.get("truncate", True)))
    if kind == "longrope":
        return LongRoPE(tuple(map(float, rope["long_factor"])), tuple(map(float, rope["short_factor"])), float(f or 0),
                        float(rope.get("attention_factor") or 0), orig)
    if kind == "llama3":
        return Llama3(float(f), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]), orig)
    raise LengthwiseError(f"RoPE scaling type {kind!r} is not one lengthwise implements "
                          f"(supported: linear, dynamic, yarn, longrope, llama3)")


def _yarn_attn(rope: dict, factor: float) -> float:
    if rope.get("attention_factor"):
        return float(rope["attention_factor"])
    m, m_all = rope.get("mscale"), rope.get("mscale_all_dim")
    if m and m_all and factor > 1:
        import math
        return (0.1 * m * math.log(factor) + 1.0) / (0.1 * m_all * math.log(factor) + 1.0)
    return 0.0


# our scheme -> HF's own rope_parameters, for the hf backend to run the peer's version of a method
def to_hf(scheme: RoPE, trained: int) -> dict | None:
    if type(scheme) is RoPE:
        return None
    if scheme.beyond:
        raise LengthwiseError(f"the hf backend has no length gate: drop beyond=true from {scheme.spec()!r} to run "
                              "HF's own version on every sequence")
    if isinstance(scheme, Linear):
        return {"rope_type": "linear", "factor": scheme.factor}
    if isinstance(scheme, DynamicNTK):
        return {"rope_type": "dynamic", "factor": scheme.factor}
    if isinstance(scheme, YaRN):
        if scheme.dynamic:
            raise LengthwiseError("the hf backend has no dynamic YaRN; run it on a lengthwise backend, or drop "
                                  "dynamic=true for HF's static yarn")
        d = {"rope_type": "yarn", "factor": scheme.factor, "beta_fast": scheme.beta_fast, "beta_slow": scheme.beta_slow,
             "original_max_position_embeddings": scheme.original or trained, "truncate": scheme.truncate}
        return d | ({"attention_factor": scheme.attn_factor} if scheme.attn_factor else {})
    raise LengthwiseError(f"the hf backend runs HF's own linear, dynamic_ntk and yarn; {scheme.name!r} is not "
                          "among them (pass HF's own settings with --hf-rope JSON)")


__all__ = ["RoPE", "Remap", "Rotary", "Rotation", "Tables", "apply_rope", "SCHEMES", "parse", "from_hf", "to_hf",
           "Linear", "NTK", "DynamicNTK", "YaRN", "LongRoPE", "Giraffe", "Llama3", "SelfExtend", "DistanceCap",
           "STRING", "Sinks", "LambdaShape"]
