"""Our packed BERT family against sentence-transformers and HF BertModel."""
import numpy as np
import pytest
import torch
import transformers

import lengthwise as lw

TEXTS = [
    "hi",
    "The quick brown fox jumps over the lazy dog.",
    "Padding-free batching packs every sequence back to back, " * 12,
    "A",
    "Transformers attend over tokens; BERT-style encoders see the whole sentence at once, left and right.",
]


def _cos_rows(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def minilm():
    return lw.load("minilm-l6", device="cpu", dtype="float32")


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm, minilm_path):
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(minilm_path), device="cpu")
    ref = st.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)
    ours = minilm.embed(TEXTS)
    assert ours.shape == (len(TEXTS), 384)
    cos = _cos_rows(ours, ref)
    assert cos.min() >= 0.99999, cos
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # Normalize module honoured


def test_minilm_settings_from_its_config(minilm):
    assert (minilm.pooling, minilm.normalize, minilm.max_seq_length) == ("mean", True, 256)


def _tiny_bert(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=128)
    hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    hf.save_pretrained(tmp_path / "bert", safe_serialization=True)
    return hf, tmp_path / "bert"


def test_random_bert_matches_hf_plus_mean_pooling(tmp_path):
    hf, folder = _tiny_bert(tmp_path)
    enc = lw.load(folder, device="cpu", dtype="float32")
    assert (enc.pooling, enc.normalize) == ("mean", False)  # sentence-transformers' default without config
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (1, 9, 128, 40)]
    ours = enc.embed_ids(seqs)
    with torch.no_grad():
        hidden = [hf(torch.tensor([s])).last_hidden_state[0] for s in seqs]
    ref = np.stack([h.mean(0).numpy() for h in hidden])
    assert _cos_rows(ours, ref).min() >= 0.99999
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_bert_packed_equals_per_sequence(minilm):
    ids = minilm.tokenize(TEXTS)
    packed = minilm.embed_ids(ids)
    single = np.concatenate([minilm.embed_ids([s]) for s in ids])
    np.testing.assert_allclose(packed, single, atol=2e-6)
    # a tight token budget splits the stream into several forwards: same answers, same order
    np.testing.assert_allclose(minilm.embed_ids(ids, max_tokens_per_forward=20), packed, atol=2e-6)


def test_encoder_context_rule(minilm):
    long = "word " * 400
    with pytest.raises(lw.LengthwiseError, match="over the 256"):
        minilm.embed([long])
    e = minilm.embed([long], truncate=True)
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(minilm.path), device="cpu")  # it truncates to 256 silently
    assert _cos_rows(e, st.encode([long]))[0] >= 0.99999


def _hf_mean(hf, seqs):
    with torch.no_grad():
        return np.stack([hf(torch.tensor([s])).last_hidden_state[0].double().mean(0).numpy() for s in seqs])


def test_bf16_residual_is_hf_bf16(tmp_path):
    """residual="model" keeps the stream in the weights' dtype, as HF runs BERT in bf16: our bf16 outputs
    sit as close to HF's bf16 as to the float32 model, and the float32 stream stays the default."""
    hf, folder = _tiny_bert(tmp_path)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (3, 40, 128, 17)]
    ref32 = _hf_mean(hf, seqs)
    hf16 = _hf_mean(hf.to(torch.bfloat16), seqs)
    ours = {r: lw.load(folder, device="cpu", dtype="bfloat16", residual=r).embed_ids(seqs) for r in ("float32", "model")}
    assert lw.load(folder, device="cpu", dtype="bfloat16").module.residual == "float32"

    def err(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)
    assert err(ours["model"], ref32) < 2e-2 and err(ours["float32"], ref32) < 2e-2
    assert err(ours["model"], hf16) < err(hf16, ref32)  # nearer to HF's own bf16 than bf16 is to float32
    assert err(ours["model"], ours["float32"]) > 0  # the option does change the stream


def test_fused_add_layer_norm_path(tmp_path, monkeypatch):
    """The GPU path's fused add + LayerNorm (attention/triton_fused.py, run by Triton's interpreter here) in the
    BERT blocks: the same embeddings as the plain ops, for both residual dtypes."""
    pytest.importorskip("triton")
    import os
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the kernels run on CPU tensors under TRITON_INTERPRET=1 only")
    from lengthwise.attention import triton_fused as bert  # Backend.fuses asks triton_fused.fused_applies
    _, folder = _tiny_bert(tmp_path)
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (5, 64, 1, 30)]
    for dtype, residual in (("float32", "float32"), ("bfloat16", "model"), ("bfloat16", "float32")):
        enc = lw.load(folder, device="cpu", dtype=dtype, residual=residual)
        calls = []
        monkeypatch.setattr(bert, "fused_applies", lambda x, backend, dtypes: calls.append(x.dtype) or True)
        fused = enc.embed_ids(seqs)
        monkeypatch.setattr(bert, "fused_applies", lambda x, backend, dtypes: False)
        plain = enc.embed_ids(seqs)
        assert len(calls) == 2 and set(calls) == {torch.float32 if residual == "float32" else torch.bfloat16}
        tol = 1e-6 if dtype == "float32" else 4e-3  # bf16: float32 reduction order may flip a rounding
        assert np.linalg.norm(fused - plain) / np.linalg.norm(plain) < tol, (dtype, residual)


def test_residual_option_errors():
    with pytest.raises(lw.LengthwiseError, match="unknown residual 'half': choose one of float32, model"):
        lw.load("minilm-l6", device="cpu", residual="half")
    with pytest.raises(lw.LengthwiseError, match="applies to BERT-family encoders"):
        lw.load("smollm2-135m", device="cpu", residual="model")
