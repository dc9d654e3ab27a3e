"""Position encodings for models trained from scratch (the length lab), one small module per paper.

    nope  learned  sinusoidal  rope  alibi  t5  fire  randomized  abacus

Unlike the schemes one level up, which re-scale or remap a pretrained RoPE checkpoint (`Rotary`), these are
part of the model they train with: some hold weights (learned, t5, fire, abacus), some add an attention bias
(alibi, t5, fire). A spec names one with its options, as everywhere else: "t5:max_distance=64",
"randomized:base=rope,max_positions=2048", "abacus:base=fire". `LlamaConfig.pe` holds the spec, and
`Llama` builds the scheme (`build`).
"""
from __future__ import annotations

import inspect

from ... import options
from ...errors import LengthwiseError
from .abacus import Abacus
from .alibi import ALiBi
from .base import Scheme, SequenceBias, Shape
from .fire import FIRE
from .learned import Learned
from .nope import NoPE
from .randomized import Randomized
from .rope import RoPEScheme
from .sinusoidal import Sinusoidal
from .t5 import T5Bias

SCHEMES: dict[str, type[Scheme]] = {c.name: c for c in (
    NoPE, Learned, Sinusoidal, RoPEScheme, ALiBi, T5Bias, FIRE, Randomized, Abacus)}
WRAPPERS = ("randomized", "abacus")  # schemes over a base scheme (option base=...)
_GIVEN = {"self", "shape", "base", "digit_ids"}  # arguments build() supplies, not options


def _options(cls) -> dict[str, tuple[type, object]]:
    sig = inspect.signature(cls.__init__)
    return {k: (p.annotation if not isinstance(p.annotation, str) else eval(p.annotation), p.default)  # noqa: S307
            for k, p in sig.parameters.items() if k not in _GIVEN}


def parse(spec: str) -> tuple[str, dict, str | None]:
    """'randomized:base=rope,max_positions=2048' -> ('randomized', {'max_positions': 2048}, 'rope'), checked."""
    if not isinstance(spec, str):
        raise LengthwiseError(f"a position encoding is named by a string like 'alibi', got {spec!r}")
    name, parts = options.split(spec)
    cls = SCHEMES.get(name)
    if cls is None:
        raise LengthwiseError(f"unknown position encoding {name!r}: choose one of {', '.join(SCHEMES)}")
    known = _options(cls)
    kw, base = {}, None
    for part in parts:
        key, eq, value = (s.strip() for s in part.partition("="))
        if key == "base" and name in WRAPPERS:
            if value.split(":")[0] in WRAPPERS or value not in SCHEMES:
                inner = [n for n in SCHEMES if n not in WRAPPERS]
                raise LengthwiseError(f"{name}: base={value!r} is not a plain position encoding ({', '.join(inner)})")
            base = value
            continue
        if key not in known or not eq:
            opts = ", ".join((["base"] if name in WRAPPERS else []) + list(known)) or "none"
            raise LengthwiseError(f"{name}: cannot read option {part!r} (options: {opts})")
        kw[key] = options.value_of(name, key, value, known[key][0])
        if isinstance(kw[key], (int, float)) and kw[key] < 0:
            raise LengthwiseError(f"{name}: {key} must be >= 0, got {value}")
    if name in WRAPPERS and base is None:
        base = "rope" if name == "randomized" else "nope"
    return name, kw, base


def canonical(spec: str) -> str:
    """The spec with its defaults spelled out only where given: the name the lab files a run under."""
    name, kw, base = parse(spec)
    parts = ([f"base={base}"] if base else []) + [f"{k}={options.format_value(v)}" for k, v in kw.items()]
    return name + (":" + ",".join(parts) if parts else "")


def has_bias(spec: str) -> bool:
    """The scheme adds an attention bias (ALiBi, T5, FIRE, or a wrapper over one): it runs on the reference kernel."""
    name, _, base = parse(spec)
    return SCHEMES[name].has_bias or (base is not None and SCHEMES[base].has_bias)


def build(spec: str, shape: Shape) -> Scheme:
    name, kw, base = parse(spec)
    cls = SCHEMES[name]
    if name == "randomized":
        return cls(shape, build(base, shape), **kw)
    if name == "abacus":
        from ...tasks.algorithmic.vocab import DIGIT_IDS
        return cls(shape, build(base, shape), DIGIT_IDS, **kw)
    return cls(shape, **kw)


__all__ = ["SCHEMES", "Scheme", "SequenceBias", "Shape", "build", "parse", "canonical", "has_bias", "NoPE", "Learned",
           "Sinusoidal", "RoPEScheme", "ALiBi", "T5Bias", "FIRE", "Randomized", "Abacus"]
