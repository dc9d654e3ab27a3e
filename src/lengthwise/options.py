"""The one `name:key=value,...` parser, for position schemes, tasks and KV policies alike.

    parse("yarn:factor=4", SCHEMES, "position scheme")  ->  YaRN(factor=4.0)

Each registry maps a name to a dataclass; its fields are the options, and each value is read as the field's
declared type: int, float, bool (true/false/1/0), str, or a tuple of floats written a/b/c or @file.json.
`check_fields` holds a dataclass built in Python to the same types.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path

from .errors import LengthwiseError

_WHAT = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def split(spec: str) -> tuple[str, list[str]]:
    """'name:a=1,b=2' -> ('name', ['a=1', 'b=2'])."""
    name, _, args = spec.strip().partition(":")
    return name.strip(), [p.strip() for p in args.split(",") if p.strip()]


def option_types(cls) -> dict[str, type]:
    """The options of a dataclass, its own first and keyword-only ones (like a scheme's beyond) last."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in sorted(dataclasses.fields(cls), key=lambda f: f.kw_only) if f.init}


def parse_kwargs(name: str, parts: list[str], cls, example: str = "...") -> dict:
    """The keyword arguments that `parts` (['key=value', ...]) give the dataclass cls, each of its type.
    example: the value the error for an unknown option shows with the first option."""
    known = option_types(cls)
    kw: dict = {}
    for part in parts:
        key, eq, value = (s.strip() for s in part.partition("="))
        if key not in known:
            opts = ", ".join(known) or "none"
            first = next(iter(known), None)
            shown = {bool: "true", str: "..."}.get(known[first], example) if first else example
            raise LengthwiseError(f"{name}: cannot read option {part!r}: {name} has no option {key!r} (options: {opts})"
                                  + (f"; write e.g. {name}:{first}={shown}" if known else ""))
        if not eq:
            raise LengthwiseError(f"{name}: option {key!r} needs a value, as in {key}=...")
        if key in kw:
            raise LengthwiseError(f"{name}: option {key!r} is given twice: give each option once")
        kw[key] = value_of(name, key, value, known[key])
    return kw


def parse(spec: str, registry: dict[str, type], what: str):
    """An instance of the registry's class named by spec, with its options parsed."""
    if not isinstance(spec, str):
        raise LengthwiseError(f"a {what} is named by a string like {next(iter(registry))!r}, got {spec!r}")
    name, parts = split(spec)
    cls = registry.get(name)
    if cls is None:
        raise LengthwiseError(f"unknown {what} {name!r}: choose one of {', '.join(registry)}")
    return cls(**parse_kwargs(name, parts, cls))


def format_value(v) -> str:
    """A field's value as a spec writes it: true/false, 4 for 4.0, a/b/c for a tuple."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, tuple):
        return "/".join(format_value(x) for x in v)
    return str(v)


def spec_of(obj, name: str, always: "set[str] | frozenset" = frozenset()) -> str:
    """The spec that parses back to the dataclass obj: `name:key=value,...`, its own options first and
    keyword-only ones last, each shown where it differs from its default or is named in `always`."""
    fs = sorted(dataclasses.fields(obj), key=lambda f: f.kw_only)
    args = ",".join(f"{f.name}={format_value(getattr(obj, f.name))}" for f in fs
                    if f.init and (getattr(obj, f.name) != f.default or f.name in always))
    return name + (":" + args if args else "")


def value_of(name: str, key: str, text: str, kind):
    try:
        if kind == tuple[float, ...]:
            if text.startswith("@"):
                return tuple(float(x) for x in json.loads(Path(text[1:]).read_text()))
            return tuple(float(x) for x in text.split("/"))
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        return text
    except (ValueError, OSError, TypeError, json.JSONDecodeError) as e:
        what = _WHAT.get(kind, "numbers a/b/c or @file.json")
        detail = f" ({e})" if isinstance(e, OSError) else ""
        takes = "" if kind is bool or kind not in _WHAT else f" ({key} takes {kind.__name__} values)"
        raise LengthwiseError(f"{name}: {key}={text!r} is not {what}{detail}{takes}") from None


def check_fields(obj, label: str, coerce: bool = False, finite: bool = True) -> None:
    """Each bool, int, float and str field of the dataclass obj has its declared type, as the parser enforces
    (a YaRN(beyond="false"), truthy, would otherwise run as something other than what its spec says).
    coerce: an int where a float is due becomes that float (frozen dataclasses too). finite=False leaves
    infinities and NaN to the object's own range checks."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        v, want = getattr(obj, f.name), hints.get(f.name)
        if want is bool:
            ok = isinstance(v, bool)
        elif want is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif want is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (not finite or math.isfinite(v))
            if ok and coerce and type(v) is not float:
                object.__setattr__(obj, f.name, float(v))
        elif want is str:
            ok = isinstance(v, str)
        else:
            continue  # lists and names: the object's own check
        if not ok:
            what = {bool: "true or false", int: "an integer", float: "a finite number" if finite else "a number", str: "a string"}[want]
            raise LengthwiseError(f"{label}: {f.name} must be {what}, got {v!r}")
