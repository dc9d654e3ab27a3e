"""How a stream of sequences becomes forward calls.

A strategy turns sequence lengths into groups of sequence indices, one group per forward call.
No strategy splits a sequence, each index appears exactly once, and `restore` puts per-group
results back in input order.

    pad           fixed-size batches in arrival order (the padded baseline, for comparison only)
    sorted        fixed-size batches after sorting by length (what sentence-transformers does)
    token_budget  consecutive sequences, each group up to max_tokens tokens
    binpack       first-fit-decreasing into packs of exactly max_tokens capacity, for fixed shapes
"""
from __future__ import annotations

from typing import Sequence, TypeVar

from .errors import LengthwiseError

T = TypeVar("T")


def pad(lens: Sequence[int], batch_size: int = 64) -> list[list[int]]:
    _positive(batch_size=batch_size)
    idx = list(range(len(lens)))
    return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]


def sorted_batches(lens: Sequence[int], batch_size: int = 64) -> list[list[int]]:
    _positive(batch_size=batch_size)
    idx = sorted(range(len(lens)), key=lambda i: -lens[i])
    return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]


def token_budget(lens: Sequence[int], max_tokens: int = 16384) -> list[list[int]]:
    """Consecutive groups up to max_tokens tokens each; a longer sequence goes alone."""
    _positive(max_tokens=max_tokens)
    groups, cur, used = [], [], 0
    for i, n in enumerate(lens):
        if cur and used + n > max_tokens:
            groups.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n
    if cur:
        groups.append(cur)
    return groups


def binpack(lens: Sequence[int], max_tokens: int = 16384) -> list[list[int]]:
    """First-fit-decreasing bin packing (prepacking): few packs, each at most max_tokens tokens."""
    _positive(max_tokens=max_tokens)
    too_long = [i for i, n in enumerate(lens) if n > max_tokens]
    if too_long:
        raise LengthwiseError(f"sequence {too_long[0]} has {lens[too_long[0]]} tokens, more than the "
                              f"pack size {max_tokens}: raise max_tokens")
    packs: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lens)), key=lambda i: -lens[i]):
        for p, r in enumerate(room):
            if lens[i] <= r:
                packs[p].append(i)
                room[p] -= lens[i]
                break
        else:
            packs.append([i])
            room.append(max_tokens - lens[i])
    return packs


STRATEGIES = {"pad": pad, "sorted": sorted_batches, "token_budget": token_budget, "binpack": binpack}


def plan(lens: Sequence[int], strategy: str = "token_budget", **kw) -> list[list[int]]:
    if strategy not in STRATEGIES:
        raise LengthwiseError(f"unknown packing strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy](lens, **kw)


def restore(groups: list[list[int]], results: list[Sequence[T]]) -> list[T]:
    """Per-group results (in each group's own order) back to input order."""
    out: list = [None] * sum(len(g) for g in groups)
    for g, res in zip(groups, results):
        for i, r in zip(g, res):
            out[i] = r
    return out


def _positive(**kw):
    for k, v in kw.items():
        if v < 1:
            raise LengthwiseError(f"{k} must be at least 1, got {v}")
