"""From-scratch position encodings against their papers' formulas and reference code."""
import math

import pytest
import torch

from lengthwise import LengthwiseError
from lengthwise.positions import scratch
from lengthwise.positions.scratch import FIRE, ALiBi, Shape, T5Bias
from lengthwise.positions.scratch.alibi import slopes
from lengthwise.positions.scratch.t5 import bucket

SHAPE = Shape(dim=32, n_heads=8, head_dim=4)


def test_alibi_slopes_follow_the_paper():
    # Press et al.: for n heads a power of two, m_k = 2^(-8k/n), k = 1..n
    for n in (1, 2, 4, 8, 16):
        assert slopes(n) == pytest.approx([2 ** (-8 * k / n) for k in range(1, n + 1)], rel=1e-12)
    # 6 heads: the 4 slopes of 4 heads, then every other slope of 8 heads (2^-1, 2^-3, ... -> 2^-0.5, 2^-1.5)
    assert slopes(6) == pytest.approx([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3], rel=1e-12)


def test_alibi_bias_is_minus_slope_times_distance():
    a = ALiBi(SHAPE)
    pos = torch.arange(5)
    b = a.bias(pos, pos)  # [H, 5, 5]
    for h, m in enumerate(slopes(8)):
        for i in range(5):
            for j in range(i + 1):
                assert b[h, i, j].item() == pytest.approx(-m * (i - j))


def test_t5_buckets_match_hf():
    from transformers.models.t5.modeling_t5 import T5Attention
    rel = torch.arange(-600, 600)[None, :] - torch.zeros(1, dtype=torch.long)[:, None]
    for bidirectional in (False, True):
        for nb, md in ((32, 128), (16, 32), (8, 20)):
            ours = bucket(rel, bidirectional, nb, md)
            theirs = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=nb,
                                                           max_distance=md)
            assert torch.equal(ours, theirs), (bidirectional, nb, md)


def test_t5_bias_looks_up_its_table():
    t5 = T5Bias(SHAPE)
    pos = torch.arange(40)
    b = t5.bias(pos, pos)
    assert torch.equal(b[:, 39, 0], t5.table.weight[bucket(torch.tensor(-39))].float())
    assert torch.equal(b[:, 3, 3], t5.table.weight[0].float())


def test_fire_normalizes_by_the_query_position():
    f = FIRE(SHAPE, c=1.0, threshold=8.0)
    x = f.normalized(torch.tensor([5, 10]), torch.tensor([2, 3]))
    # i=5, j=2: log(3 + 1) / log(max(8, 5) + 1);  i=10, j=3: log(7 + 1) / log(10 + 1)
    assert x[0, 0].item() == pytest.approx(math.log(4) / math.log(9), rel=1e-6)
    assert x[1, 1].item() == pytest.approx(math.log(8) / math.log(11), rel=1e-6)
    f2 = FIRE(SHAPE, c=2.0, threshold=8.0)
    assert f2.normalized(torch.tensor([10]), torch.tensor([3]))[0, 0].item() == pytest.approx(
        math.log(15) / math.log(21), rel=1e-6)
    # any length maps into [0, 1]
    far = f.normalized(torch.tensor([5000]), torch.arange(5001)).detach()
    assert float(far.min()) == 0.0 and float(far.max()) == pytest.approx(1.0)


def test_abacus_places_count_within_each_number():
    from lengthwise.tasks.algorithmic.vocab import ID
    ab = scratch.build("abacus", SHAPE)
    seq = ["<s>", "1", "2", "3", "+", "4", "5", "=", "<sep>", "9"]
    tokens = torch.tensor([ID[s] for s in seq] * 2)
    places = ab.places(tokens, torch.tensor([0, 10, 20], dtype=torch.int32))
    assert places.tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 0, 1] * 2


def test_randomized_positions_are_sorted_and_reach_far():
    r = scratch.build("randomized:max_positions=512", SHAPE).train()
    torch.manual_seed(0)
    p = r.remap(torch.arange(30), torch.tensor([0, 10, 30], dtype=torch.int32))
    for part in (p[:10], p[10:]):
        assert torch.all(part[1:] > part[:-1]) and int(part.max()) < 512
    assert int(p.max()) > 100  # positions far past the sequence's own length are trained
    r.eval()
    a = r.remap(torch.arange(10), torch.tensor([0, 10], dtype=torch.int32))
    b = r.remap(torch.arange(30), torch.tensor([0, 20, 30], dtype=torch.int32))
    assert torch.equal(a, b[20:])  # evaluation: a sequence's positions depend on its length alone


def test_randomized_training_draw_is_a_uniform_sorted_subset():
    """The batched draw picks each n-subset of [0, M) with equal odds: the law of its smallest member is
    C(M-1-j, n-1) / C(M, n), computed by hand here, and each position is in it with probability n / M."""
    from math import comb
    r = scratch.build("randomized:max_positions=8", SHAPE).train()
    rows = 30000
    p = r._draw([3] * rows, torch.device("cpu"), torch.Generator().manual_seed(0)).view(rows, 3)
    assert torch.all(p[:, 1:] > p[:, :-1]) and int(p.min()) >= 0 and int(p.max()) < 8
    smallest = torch.bincount(p[:, 0], minlength=8).double() / rows
    exact = torch.tensor([comb(7 - j, 2) / comb(8, 3) for j in range(8)], dtype=torch.float64)
    assert torch.allclose(smallest, exact, atol=0.01)
    member = torch.bincount(p.flatten(), minlength=8).double() / rows
    assert torch.allclose(member, torch.full((8,), 3 / 8, dtype=torch.float64), atol=0.01)
    mixed = r._draw([1, 5, 2], torch.device("cpu"), torch.Generator().manual_seed(1))
    assert mixed.shape == (8,) and torch.all(mixed[1:6][1:] > mixed[1:6][:-1])


def test_specs_and_errors():
    assert scratch.canonical("randomized") == "randomized:base=rope"
    assert scratch.canonical("t5:max_distance=64") == "t5:max_distance=64"
    with pytest.raises(LengthwiseError, match="unknown position encoding 'alibii'"):
        scratch.parse("alibii")
    with pytest.raises(LengthwiseError, match="not a plain position encoding"):
        scratch.parse("randomized:base=abacus")
    with pytest.raises(LengthwiseError, match="cannot read option"):
        scratch.parse("alibi:slope=2")


@pytest.mark.parametrize("spec", ["alibi", "t5", "fire", "randomized:base=alibi", "abacus:base=t5"])
def test_a_batch_of_sequences_gets_each_ones_bias_exactly(spec):
    """The reference kernel asks for every sequence of one length at once (SequenceBias.batch): the same numbers,
    and the same gradients into a learned bias, as one sequence at a time."""
    from types import SimpleNamespace
    from lengthwise.positions import scratch
    torch.manual_seed(0)
    s = scratch.build(spec, scratch.Shape(32, 4, 8))  # float32, as the lab trains
    lens = [5, 9, 5, 5, 9, 3]
    positions = torch.cat([torch.randperm(40)[:n].sort().values for n in lens])  # randomized-style gaps
    cu = torch.tensor([0] + lens).cumsum(0)
    sb = s.biases(positions, SimpleNamespace(cu_q=cu))
    for n in (5, 9):
        seqs = [i for i, m in enumerate(lens) if m == n]
        one = torch.stack([sb(i, n, n) for i in seqs])
        many = sb.batch(seqs, n)
        assert many.shape == (len(seqs), 4, n, n), spec
        assert torch.allclose(many, one, rtol=1e-6, atol=1e-7), spec  # one GEMM for FIRE's MLP, not several
        params = [p for p in s.parameters() if p.requires_grad]
        if params:
            g1 = torch.autograd.grad(one.square().sum(), params, allow_unused=True)
            g2 = torch.autograd.grad(sb.batch(seqs, n).square().sum(), params, allow_unused=True)
            assert any(a is not None for a in g1), spec
            assert all((a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-5, atol=1e-6))
                       for a, b in zip(g1, g2)), spec
