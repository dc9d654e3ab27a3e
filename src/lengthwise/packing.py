"""How a stream of sequences becomes forward calls. Results always come back in input order."""
from __future__ import annotations


def token_budget(lens: list[int], budget: int) -> list[list[int]]:
    """Consecutive groups of sequence indices, each up to `budget` tokens (a longer sequence goes alone)."""
    groups, cur, used = [], [], 0
    for i, n in enumerate(lens):
        if cur and used + n > budget:
            groups.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n
    if cur:
        groups.append(cur)
    return groups
