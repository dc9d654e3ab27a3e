"""Every packing strategy: order restored, no sequence split, every token processed exactly once."""
import random

import pytest

from lengthwise import LengthwiseError
from lengthwise import packing

LENS = [random.Random(s).randint(1, 500) for s in range(257)]
CASES = [("pad", dict(batch_size=64)), ("sorted", dict(batch_size=10)), ("token_budget", dict(max_tokens=1000)),
         ("binpack", dict(max_tokens=1024)), ("token_budget", dict(max_tokens=100))]


@pytest.mark.parametrize("strategy,kw", CASES)
def test_each_sequence_once_and_order_restored(strategy, kw):
    groups = packing.plan(LENS, strategy, **kw)
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(len(LENS)))  # each sequence exactly once, whole
    assert sum(LENS[i] for i in flat) == sum(LENS)  # so every token exactly once
    # a fake forward: each group returns its sequences' token lists in group order
    seqs = [[(i, t) for t in range(n)] for i, n in enumerate(LENS)]
    results = [[seqs[i] for i in g] for g in groups]
    assert packing.restore(groups, results) == seqs


def test_shapes_each_strategy_promises():
    assert all(len(g) <= 64 for g in packing.plan(LENS, "pad", batch_size=64))
    assert packing.plan(LENS, "pad", batch_size=64)[0] == list(range(64))  # arrival order
    s = packing.plan(LENS, "sorted", batch_size=10)
    assert [LENS[i] for g in s for i in g] == sorted(LENS, reverse=True)
    for g in packing.plan(LENS, "token_budget", max_tokens=1000):
        assert sum(LENS[i] for i in g) <= 1000 or len(g) == 1
        assert g == list(range(g[0], g[-1] + 1))  # consecutive
    packs = packing.plan(LENS, "binpack", max_tokens=1024)
    assert all(sum(LENS[i] for i in g) <= 1024 for g in packs)
    # first-fit-decreasing is within 11/9 OPT + 1 of the optimum; the sum bound is a floor on OPT
    assert len(packs) <= 11 / 9 * (sum(LENS) / 1024) + 2


def test_binpack_hand_case():
    # FFD on [5, 4, 3, 3, 2, 2, 1] into 8: {5,3}, {4,3,1}, {2,2}
    assert packing.binpack([3, 5, 2, 4, 3, 1, 2], 8) == [[1, 0], [3, 4, 5], [2, 6]]


def test_bad_arguments():
    with pytest.raises(LengthwiseError, match="unknown packing strategy"):
        packing.plan([1], "zigzag")
    with pytest.raises(LengthwiseError, match="more than the pack size"):
        packing.binpack([10, 3], 8)
    with pytest.raises(LengthwiseError, match="at least 1"):
        packing.pad([1], batch_size=0)
