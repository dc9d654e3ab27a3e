"""The length gate (beyond=true), in one place: which sequences use a scheme, and which run apart.

A gated scheme applies only to sequences whose prompt is longer than the trained context; the others run as
the checkpoint, bit for bit. The side is keyed on the prompt for a sequence's whole life (a decode step never
switches it), so cached keys keep one rotation. A gated remap runs its two sides as separate batches, so the
side within the trained context skips the far pass entirely.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Lengths:
    """What the gate keys on beside the attention metadata, from a KV cache: each planned sequence's prompt
    length [B], the longest prompt of the cache and its largest region (host ints: no sync to read them).
    Without a cache a sequence's prompt is all of it (None here). seen [B]: each sequence's length after this
    forward where a cache that evicts holds fewer tokens than it has seen (None: meta.used_k says it)."""
    prompt_len: torch.Tensor | None = None
    prompt_max: int | None = None
    max_capacity: int | None = None
    seen: torch.Tensor | None = None


def apart(scheme, trained: int, lens: list[int]) -> list[list[int]]:
    """Indices of sequences that must run as separate batches: a length-gated remap's two sides (within the
    trained context, past it), so the ones within skip the far pass and run exactly as trained (in one pack
    they would be exact in math only); otherwise all together."""
    from .rope import Remap
    if not (scheme.beyond and isinstance(scheme, Remap)):
        return [list(range(len(lens)))]
    sides = ([i for i, n in enumerate(lens) if n <= trained], [i for i, n in enumerate(lens) if n > trained])
    return [side for side in sides if side]


def gate(scheme, trained: int, positions: torch.Tensor, meta, lengths: Lengths | None) -> torch.Tensor | None | bool:
    """beyond=true: [T] bool, True where the token's sequence uses the scheme; False: no sequence of this
    forward does (host-side, so the plain path runs with no sync and stays capturable); None: no gate."""
    from ..errors import LengthwiseError
    if not scheme.beyond:
        return None
    if meta is None:
        raise LengthwiseError(f"{scheme.spec()}: a length-gated scheme needs the forward's AttnMeta "
                              "(each sequence's length) to pick its side")
    if lengths is None or lengths.prompt_len is None:  # no cache: a sequence's prompt is all of it
        lens, longest = (meta.used_k if meta.used_k is not None else meta.cu_k.diff()), meta.max_k
    else:
        lens, longest = lengths.prompt_len, lengths.prompt_max
    if longest <= trained:
        return False
    return torch.repeat_interleave(lens > trained, meta.cu_q.diff().long(), output_size=positions.shape[0])
