"""lw.from_hf: in-memory HF models become lengthwise models that share their parameters (issue 21, item 5)."""
import pytest
import torch
import transformers

import lengthwise as lw
from lengthwise.models import SplitLinear

from conftest import rel_err, tiny_hf_causal

SEQS = [[5, 17, 3, 99, 42, 7, 1, 0, 210], [8, 9], [33] * 5 + [60, 61, 62]]


def _hf_logits(hf, seqs):
    with torch.no_grad():
        return [hf(torch.tensor([s])).logits[0] for s in seqs]


def _shares(lm, hf) -> bool:
    """Every lengthwise parameter is one of HF's own, by data pointer (and by object)."""
    theirs = {p.data_ptr() for p in hf.parameters()}
    objects = {id(p) for p in hf.parameters()}
    ours = list(lm.module.parameters())
    return bool(ours) and all(p.data_ptr() in theirs and id(p) in objects for p in ours)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_logits_equal_hf_and_no_parameter_is_copied(tmp_path, kind):
    hf, _ = tiny_hf_causal(kind, tmp_path, sliding_window=4 if kind == "mistral" else None)
    hf.train()  # the mode and requires_grad HF had are left as they were
    lm = lw.from_hf(hf)
    assert isinstance(lm, lw.CausalLM) and lm.arch == type(hf).__name__
    assert hf.training and all(m.training for m in hf.modules()) and not lm.module.training
    for ours, ref in zip(lm.logits(SEQS), _hf_logits(hf.eval(), SEQS)):
        assert rel_err(ours, ref) <= 1e-4
    assert _shares(lm, hf)
    assert sum(p.numel() for p in lm.module.parameters()) == sum(p.numel() for p in hf.parameters())
    assert isinstance(lm.module.layers[0].attention.wqkv, SplitLinear)
    assert all(p.requires_grad for p in hf.parameters())
    with torch.no_grad():  # one weight, two views of it: a change in HF's is the lengthwise model's too
        hf.model.layers[1].mlp.up_proj.weight.mul_(-1)
    for ours, ref in zip(lm.logits(SEQS), _hf_logits(hf, SEQS)):
        assert rel_err(ours, ref) <= 1e-4


def test_tied_embeddings_share_one_weight(tmp_path):
    hf, _ = tiny_hf_causal("llama", tmp_path, tie_word_embeddings=True)
    assert hf.lm_head.weight is hf.model.embed_tokens.weight
    lm = lw.from_hf(hf)
    assert lm.module.output is None and _shares(lm, hf)
    for ours, ref in zip(lm.logits(SEQS), _hf_logits(hf, SEQS)):
        assert rel_err(ours, ref) <= 1e-4


def test_positions_and_kv_policies_apply_as_on_a_loaded_folder(tmp_path):
    hf, folder = tiny_hf_causal("llama", tmp_path, max_position_embeddings=16)
    long = [list(range(1, 40)), list(range(50, 70))]  # past the trained 16
    shared = lw.from_hf(hf, positions="yarn:factor=4")
    loaded = lw.load(folder, device="cpu", dtype="float32", positions="yarn:factor=4")
    assert shared.positions.spec() == loaded.positions.spec() and shared.context_length == 64
    for a, b in zip(shared.logits(long), loaded.logits(long)):
        assert rel_err(a, b) <= 1e-5
    plain = lw.from_hf(hf)
    short = [long[1][:16]]
    assert rel_err(plain.logits(short)[0], shared.logits(short)[0]) > 1e-3  # the scheme did something
    kv = "window:sinks=2,recent=6"
    a = lw.from_hf(hf, kv=kv).generate_ids([[3, 4, 5, 6, 7, 8, 9, 10, 11]], max_new_tokens=5)
    b = lw.load(folder, device="cpu", dtype="float32", kv=kv).generate_ids([[3, 4, 5, 6, 7, 8, 9, 10, 11]],
                                                                         max_new_tokens=5)
    assert a == b and lw.from_hf(hf, kv=kv).kv.spec() == kv


def test_bert_model_hidden_states_and_mean_pooling(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    hf = transformers.BertModel(cfg).eval()
    hf.set_attn_implementation("eager")
    enc = lw.from_hf(hf)
    assert isinstance(enc, lw.Encoder) and _shares(enc, hf)
    seqs = [[101, 7, 55, 3, 102], [101, 102], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
    emb = enc.embed_ids(seqs)
    for i, s in enumerate(seqs):
        with torch.no_grad():
            h = hf(torch.tensor([s])).last_hidden_state[0]
        b = lw.RaggedBatch.from_lists([s], "cpu")
        with torch.inference_mode():
            ours = enc.module(b.tokens, b.positions, enc.step(b))
        assert rel_err(ours, h) <= 1e-4
        assert rel_err(torch.from_numpy(emb[i]), h.mean(0)) <= 1e-4  # mean pooling, sentence-transformers' default


def test_what_from_hf_refuses(tmp_path):
    with pytest.raises(lw.LengthwiseError, match="from_hf takes an in-memory HF model"):
        lw.from_hf(torch.nn.Linear(2, 2))
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(lw.LengthwiseError, match="GPT2LMHeadModel"):
        lw.from_hf(gpt2)
    hf, _ = tiny_hf_causal("llama", tmp_path)
    hf.model.layers[0].to(torch.float64)
    with pytest.raises(lw.LengthwiseError, match="several devices or dtypes"):
        lw.from_hf(hf)
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=32))
    with pytest.raises(lw.LengthwiseError, match="learned absolute positions"):
        lw.from_hf(bert, positions="yarn:factor=2")
