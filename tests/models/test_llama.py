"""Our packed Llama family against HF transformers' own model code, one sequence at a time."""
import pytest
import torch

import lengthwise as lw
from conftest import rel_err, tiny_hf_causal

LENS = [1, 7, 64, 300]


def _seqs(vocab, lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lens]


def _hf_logits(hf, seqs):
    with torch.no_grad():
        return [hf(torch.tensor([s])).logits[0].float() for s in seqs]


@pytest.mark.parametrize("kind,over", [
    ("llama", dict(tie_word_embeddings=False)),
    ("qwen2", dict(tie_word_embeddings=False)),
    ("mistral", dict(sliding_window=16)),  # the window is far shorter than the sequences
    ("llama", dict(tie_word_embeddings=True, attention_bias=True, head_dim=32)),
    # Qwen2 slides only from layer max_window_layers on (HF's layer_types): layer 0 full, layer 1 windowed
    ("qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1)),
])
def test_random_configs_match_hf(tmp_path, kind, over):
    hf, folder = tiny_hf_causal(kind, tmp_path, **over)
    if over.get("max_window_layers") is not None:
        assert hf.config.layer_types == ["full_attention", "sliding_attention"]  # the mixed case is really built
    lm = lw.load(folder, device="cpu", dtype="float32")
    seqs = _seqs(hf.config.vocab_size, LENS)
    ours = lm.logits(seqs)
    for o, r, n in zip(ours, _hf_logits(hf, seqs), LENS):
        assert o.shape == (n, hf.config.vocab_size)
        assert rel_err(o, r) <= 1e-4, (kind, n, rel_err(o, r))


def test_config_read_from_hf(tmp_path):
    _, folder = tiny_hf_causal("qwen2", tmp_path, tie_word_embeddings=False)
    cfg = lw.load(folder, device="cpu").config
    assert (cfg.qkv_bias, cfg.o_bias, cfg.tie_embeddings, cfg.n_kv_heads) == (True, False, False, 2)


@pytest.mark.slow
def test_smollm2_matches_hf(smol, hf_smol):
    seqs = _seqs(smol.config.vocab_size, LENS, seed=1)
    for o, r, n in zip(smol.logits(seqs), _hf_logits(hf_smol, seqs), LENS):
        assert rel_err(o, r) <= 1e-4, (n, rel_err(o, r))


@pytest.mark.parametrize("lens", [[5], [1, 1, 1], [300, 1, 33, 2, 128], [17, 250]])
def test_packed_equals_per_sequence(tmp_path, lens):
    _, folder = tiny_hf_causal("mistral", tmp_path, sliding_window=24)
    lm = lw.load(folder, device="cpu", dtype="float32")
    seqs = _seqs(lm.config.vocab_size, lens, seed=len(lens))
    packed = lm.logits(seqs)
    for s, p in zip(seqs, packed):
        assert rel_err(p, lm.logits([s])[0]) <= 1e-5


def test_float64_reference_is_tighter(tmp_path):
    """In float64 the gap shrinks to HF's own float32 internals (its RMSNorm and softmax upcast to
    float32, not float64), about 5e-8: the float32 gap is rounding, not a difference in the math."""
    hf, folder = tiny_hf_causal("llama", tmp_path, tie_word_embeddings=False)
    lm = lw.load(folder, device="cpu", dtype="float64")
    hf = hf.double()
    seqs = _seqs(hf.config.vocab_size, [3, 40])
    with torch.no_grad():
        for o, s in zip(lm.logits(seqs), seqs):
            assert o.dtype == torch.float64
            assert rel_err(o, hf(torch.tensor([s])).logits[0]) <= 5e-7


def test_over_context_is_an_error(tmp_path):
    _, folder = tiny_hf_causal("llama", tmp_path, max_position_embeddings=32)
    lm = lw.load(folder, device="cpu")
    with pytest.raises(lw.LengthwiseError, match="over the 32"):
        lm.logits([[1] * 33])
    assert lm.logits([[1] * 40], truncate=True)[0].shape[0] == 32


def test_window_settings_read_as_hf_reads_them():
    """A window with no size takes HF's default (4096); layer_types, when given, say which layers slide."""
    from lengthwise.models.llama import LlamaConfig
    base = dict(vocab_size=10, hidden_size=8, num_hidden_layers=3, num_attention_heads=2, intermediate_size=16)
    q = LlamaConfig.from_hf({**base, "model_type": "qwen2", "use_sliding_window": True, "max_window_layers": 1})
    assert [q.window_of(i) for i in range(3)] == [None, 4096, 4096]
    off = LlamaConfig.from_hf({**base, "model_type": "qwen2", "sliding_window": 64})  # use_sliding_window unset
    assert not off.windowed
    m = LlamaConfig.from_hf({**base, "model_type": "mistral", "sliding_window": 32,
                             "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]})
    assert [m.window_of(i) for i in range(3)] == [32, None, 32]
    assert not LlamaConfig.from_hf({**base, "model_type": "mistral", "sliding_window": None}).windowed
