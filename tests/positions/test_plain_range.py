"""A remap's plain range: sequences no longer than Remap.plain_up_to see every key as the plain model does, so
they take the plain model's own path (no far pass, no far-key pool) and give its logits bit for bit. The range
itself is checked against the two-region path, forced on, in float64."""
import pytest
import torch

import lengthwise as lw
import lengthwise.generate as gen
import lengthwise.attention.two_region as two_region
from lengthwise.kv import RaggedKVCache
from lengthwise.positions import parse
from lengthwise.positions.rope import Rotary
from conftest import rel_err, tiny_hf_causal

TRAINED = 32
REMAPS = ["sinks:sinks=4", "sinks:sinks=2,window=20", "lambda:n_global=3", "lambda:n_global=3,window=16,cap=20",
          "self_extend:group=4,window=8", "distance_cap:cap=12", "string:shift=10,local=3"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_hf_causal("llama", tmp_path_factory.mktemp("plain"), max_position_embeddings=TRAINED)[1]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The same weights (the same seed) with a longer trained context: the plain model past 32 tokens too."""
    return _load(tiny_hf_causal("llama", tmp_path_factory.mktemp("wide"), max_position_embeddings=64)[1], "none")


def _load(folder, spec):
    return lw.load(folder, device="cpu", dtype="float64", positions=spec)


def _seqs(lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 211, (n,), generator=g).tolist() for n in lens]


def _edge(spec):
    return parse(spec).plain_up_to(TRAINED)


@pytest.mark.parametrize("spec", REMAPS)
def test_the_range_is_plain_attention_on_the_two_region_path(folder, plain, spec, monkeypatch):
    monkeypatch.setattr(Rotary, "_within_plain_range", lambda self, meta, lengths=None: False)  # always two passes
    n = _edge(spec)
    seqs = _seqs([n, n - 1, 3, n + 2], seed=1)
    want, remap = plain.logits(seqs), _load(folder, spec).logits(seqs)
    for p, r in zip(want[:3], remap[:3]):
        assert rel_err(r, p) <= 1e-10
    # just past it the remap does change what is seen (lambda's one global key at distance = cap is still
    # plain one token past its window, hence two)
    assert rel_err(remap[3][-1:], want[3][-1:]) > 1e-6


@pytest.mark.parametrize("spec", REMAPS)
def _count_two_region(monkeypatch) -> list:
    calls = []
    real = two_region.attend_two_region
    monkeypatch.setattr(two_region, "attend_two_region", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


@pytest.mark.parametrize("spec", REMAPS)
def test_within_the_range_the_plain_path_runs_bit_for_bit(folder, plain, spec, monkeypatch):
    n = _edge(spec)
    seqs = _seqs([n, 5, n - 2], seed=2)
    lm, two = _load(folder, spec), _count_two_region(monkeypatch)
    for p, r in zip(plain.logits(seqs), lm.logits(seqs)):
        assert torch.equal(r, p)
    assert not two  # no second pass ran (float64 on CPU would hide one: its far region is empty there)
    past = _seqs([n + 2, 5], seed=2)  # one sequence past the range: the pack takes two passes, exact in math
    got, want = lm.logits(past), plain.logits(past)
    assert two and rel_err(got[0][-1:], want[0][-1:]) > 1e-6 and rel_err(got[1], want[1]) <= 1e-10


@pytest.mark.parametrize("spec", ["lambda:n_global=3", "sinks:sinks=4", "distance_cap:cap=12"])
def test_generation_keys_on_the_cache_capacity(folder, plain, spec, monkeypatch):
    """Prompt plus new tokens within the range: the plain model's greedy tokens, and no far-key pool; a cache
    that can outgrow the range runs the far pass from its first token (one path for the whole generation)."""
    made = []
    monkeypatch.setattr(gen, "RaggedKVCache", lambda *a, **kw: made.append(kw) or RaggedKVCache(*a, **kw))
    n = _edge(spec)
    lm = _load(folder, spec)
    prompts = _seqs([n - 6, 4], seed=3)
    want = plain.generate_ids(prompts, max_new_tokens=6)
    two = _count_two_region(monkeypatch)
    assert lm.generate_ids(prompts, max_new_tokens=6) == want
    assert made[-1]["far_keys"] is False and not two
    lm.generate_ids(prompts, max_new_tokens=7)  # may outgrow the range: two passes from the prompt's forward on
    assert made[-1]["far_keys"] is lm.module.rotary.far_keys and len(two) > lm.module.cfg.n_layers
