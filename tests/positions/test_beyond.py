"""Length-gated schemes (beyond=true): a sequence whose prompt fits the trained context runs exactly as
trained, one whose prompt does not runs the scheme, each on its own side inside one packed batch, and a
decode step never switches a sequence over."""
import pytest
import torch

import lengthwise as lw
from lengthwise.kv import RaggedKVCache
from lengthwise.models.llama import Step
from lengthwise.ragged import RaggedBatch
from lengthwise.positions import parse, to_hf
from conftest import rel_err, tiny_hf_causal

TRAINED = 32
GATED = ["linear:factor=2", "ntk:factor=2", "dynamic_ntk:factor=2", "yarn:factor=4", "yarn:factor=8,dynamic=true",
         "giraffe:truncate=16", "longrope:factors=1/1/1.5/2/2/3/3/4", "self_extend:group=4,window=8",
         "distance_cap:cap=12", "string:shift=10,local=3"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    _, f = tiny_hf_causal("llama", tmp_path_factory.mktemp("beyond"), max_position_embeddings=TRAINED)
    return f


def _seqs(lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 211, (n,), generator=g).tolist() for n in lens]


def _load(folder, spec):
    return lw.load(folder, device="cpu", dtype="float64", positions=spec)


@pytest.mark.parametrize("spec", GATED)
def test_within_the_trained_context_it_is_the_checkpoint_bit_for_bit(folder, spec):
    seqs = _seqs([5, TRAINED, 17, 1])
    plain = _load(folder, "none").logits(seqs)
    gated = _load(folder, spec + ",beyond=true").logits(seqs)
    ungated = _load(folder, spec).logits(seqs)
    for p, g, u in zip(plain, gated, ungated):
        assert torch.equal(g, p)
    if not parse(spec).per_length():  # dynamic schemes are the checkpoint within the trained context anyway
        assert any(rel_err(u, p) > 1e-6 for u, p in zip(ungated, plain))  # the scheme itself does change them


@pytest.mark.parametrize("spec", GATED)
def test_past_the_trained_context_it_is_the_scheme_bit_for_bit(folder, spec):
    ungated = _load(folder, spec)
    seqs = _seqs([min(n, ungated.context_length) for n in (TRAINED + 1, 70, 45)], seed=1)
    gated = _load(folder, spec + ",beyond=true").logits(seqs)
    for g, u in zip(gated, ungated.logits(seqs)):
        assert torch.equal(g, u)


@pytest.mark.parametrize("spec", GATED)
def test_a_mixed_pack_runs_each_sequence_on_its_own_side(folder, spec):
    plain, ungated = _load(folder, "none"), _load(folder, spec)
    seqs = _seqs([min(70, ungated.context_length), 5, TRAINED, TRAINED + 1, 20], seed=2)
    gated = _load(folder, spec + ",beyond=true").logits(seqs)
    for s, g in zip(seqs, gated):
        ref = (ungated if len(s) > TRAINED else plain).logits([s])[0]
        assert rel_err(g, ref) <= 1e-10, len(s)


def _teacher_forced(lm, prompts, conts):
    """Prefill the prompts into one ragged cache, then feed conts one token per step: [prompt + cont] logits
    of each sequence, as a decode loop sees them (the cache tells the gate each prompt's length)."""
    model = lm.module
    caps = [len(p) + len(c) for p, c in zip(prompts, conts)]
    cache = RaggedKVCache(model.cfg.n_layers, caps, model.cfg.n_kv_heads, model.cfg.head_dim, torch.float64, "cpu",
                          far_keys=model.rotary.far_keys_for(max(map(len, prompts)), max(caps)),
                          prompts=[len(p) for p in prompts])
    b = RaggedBatch.from_lists(prompts)
    slots, pos, meta = cache.plan(torch.arange(len(prompts)), b.cu_seqlens.diff().long())
    got = [list(x) for x in b.split(model(b.tokens, pos, Step(meta, model.mask, "reference", cache, slots)))]
    for t in range(len(conts[0])):
        slots, pos, meta = cache.plan(torch.arange(len(prompts)), torch.ones(len(prompts), dtype=torch.int64))
        out = model(torch.tensor([c[t] for c in conts]), pos, Step(meta, model.mask, "reference", cache, slots))
        for i in range(len(prompts)):
            got[i].append(out[i])
    return [torch.stack(g) for g in got]


@pytest.mark.parametrize("spec", ["self_extend:group=4,window=8", "yarn:factor=4", "dynamic_ntk:factor=2",
                                  "distance_cap:cap=12", "longrope:factors=1/1/1.5/2/2/3/3/4"])
def test_decode_keys_on_the_prompt(folder, spec):
    """A prompt within the trained context stays as trained while its answer runs past it; a longer prompt
    runs the scheme from its first token; packed in one cache, each as alone."""
    (short, long), conts = _seqs([TRAINED - 4, TRAINED + 9], seed=3), _seqs([12, 12], seed=4)
    gated, plain, ungated = _load(folder, spec + ",beyond=true"), _load(folder, "none"), _load(folder, spec)
    both = _teacher_forced(gated, [short, long], conts)
    want_short = _teacher_forced(plain, [short], conts[:1])[0]
    assert rel_err(both[0], want_short) <= 1e-10
    assert rel_err(_teacher_forced(ungated, [short], conts[:1])[0], want_short) > 1e-6  # the gate is what holds it
    assert rel_err(both[1], _teacher_forced(ungated, [long], conts[1:])[0]) <= 1e-10
    assert torch.equal(_teacher_forced(gated, [short], conts[:1])[0], want_short)  # alone: bit for bit


def test_generation_tells_the_cache_each_prompt(folder, monkeypatch):
    import lengthwise.generate as gen
    made = []
    monkeypatch.setattr(gen, "RaggedKVCache", lambda *a, **kw: made.append(kw) or RaggedKVCache(*a, **kw))
    lm = _load(folder, "self_extend:group=4,window=8,beyond=true")
    lm.generate_ids(_seqs([TRAINED - 4, 9]), max_new_tokens=6)
    lm.generate_ids(_seqs([TRAINED + 2, TRAINED + 1]), max_new_tokens=6)
    mixed = _seqs([TRAINED + 2, 9, TRAINED + 5], seed=6)
    out = lm.generate_ids(mixed, max_new_tokens=6)  # a gated remap runs the two sides apart, in the caller's order
    assert [(kw["prompts"], kw["far_keys"]) for kw in made] == [
        ([TRAINED - 4, 9], False), ([TRAINED + 2, TRAINED + 1], True), ([9], False), ([TRAINED + 2, TRAINED + 5], True)]
    assert out == [lm.generate_ids([p], max_new_tokens=6)[0] for p in mixed]


def test_a_gated_remap_needs_its_far_key_pool_only_past_the_trained_context(folder):
    rot = _load(folder, "self_extend:group=4,window=8,beyond=true").module.rotary
    assert (rot.far_keys_for(TRAINED, TRAINED + 6), rot.far_keys_for(TRAINED + 1, TRAINED + 7)) == (False, True)
    assert _load(folder, "self_extend:group=4,window=8").module.rotary.far_keys_for(TRAINED, TRAINED + 6)


def test_a_gated_remap_never_packs_the_two_sides_together(folder):
    lens = [70, 5, TRAINED, TRAINED + 1, 20, 40]
    remap, scaling = _load(folder, "self_extend:group=4,window=8,beyond=true"), _load(folder, "yarn:factor=4,beyond=true")
    groups = remap._groups(lens, 10_000)
    assert sorted(i for g in groups for i in g) == list(range(len(lens)))
    assert all(len({lens[i] > TRAINED for i in g}) == 1 for g in groups)
    assert scaling._groups(lens, 10_000) == [list(range(len(lens)))]  # scalings are exact when mixed: one pack
    inside = [s for s in _seqs(lens, seed=8) if len(s) <= TRAINED]
    mixed = remap.logits(_seqs(lens, seed=8))
    alone = _load(folder, "none").logits(inside)
    assert all(torch.equal(a, b) for a, b in zip([x for x, n in zip(mixed, lens) if n <= TRAINED], alone))


def test_seeded_sampling_over_a_split_batch(folder):
    lm = _load(folder, "self_extend:group=4,window=8,beyond=true")
    short, long = _seqs([TRAINED - 4, TRAINED + 9], seed=9)
    both = lm.generate_ids([short, long], max_new_tokens=8, temperature=1.0, seed=5)
    assert both[0] == lm.generate_ids([short], max_new_tokens=8, temperature=1.0, seed=5)[0]
    # the second side draws next from the call's one generator: the same call repeats exactly
    assert both == lm.generate_ids([short, long], max_new_tokens=8, temperature=1.0, seed=5)
    assert both[1] != lm.generate_ids([long], max_new_tokens=8, temperature=1.0, seed=5)[0]


def test_a_gated_rotation_needs_the_forward_meta():
    rot = lw.positions.Rotary(parse("yarn:factor=4,beyond=true"), 16, 10000.0, TRAINED)
    with pytest.raises(lw.LengthwiseError, match="needs the forward's AttnMeta"):
        rot(torch.arange(5))


def test_spec_round_trips_and_keeps_the_first_option_first():
    for spec in GATED:
        gated = parse(spec + ",beyond=true")
        assert gated.beyond and gated.spec().endswith(",beyond=true") and parse(gated.spec()) == gated
        assert parse(spec).spec() == parse(spec).spec().replace(",beyond=false", "")
    assert parse("none").spec() == "none"
    assert lw.positions.SelfExtend(24, 1024, beyond=True).spec() == "self_extend:group=24,window=1024,beyond=true"


@pytest.mark.parametrize("spec,match", [
    ("sinks:sinks=2,window=9,beyond=true", "does not apply to an attention pattern"),
    ("lambda:n_global=3,window=10,cap=10,beyond=true", "does not apply to an attention pattern"),
    ("none:beyond=true", "none is no method"),
    ("yarn:factor=4,beyond=maybe", "beyond='maybe' is not true or false"),
    ("yarn:facter=4", r"options: factor, .*, beyond\); write e.g. yarn:factor=4"),
])
def test_bad_gates_fail_with_one_line(folder, spec, match):
    with pytest.raises(lw.LengthwiseError, match=match):
        lw.load(folder, device="cpu", positions=spec)


def test_the_hf_backend_refuses_a_gate():
    with pytest.raises(lw.LengthwiseError, match="no length gate"):
        to_hf(parse("yarn:factor=4,beyond=true"), TRAINED)
