"""sentence-transformers folders read as sentence-transformers itself reads them, or are refused.

Each folder is built by sentence-transformers from a small random BERT (safetensors), and its own encode() is
the reference: cosine >= 0.99999 per row and the same dimension."""
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import transformers

import lengthwise as lw
from lengthwise import LengthwiseError
from lengthwise.models.load import load_tokenizer

TEXTS = ["A short one.", "Packed sequences never pad, whatever their lengths are.",
         "x", "The quick brown fox jumps over the lazy dog " * 6]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory, minilm_path):
    folder = tmp_path_factory.mktemp("st") / "bert"
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=128)
    model = transformers.BertModel(cfg, add_pooling_layer=False)
    with torch.no_grad():  # a spread of token embeddings, so that the pooling modes differ clearly
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(folder, safe_serialization=True)
    load_tokenizer(minilm_path).save_pretrained(folder)
    return folder


def _build(bert_folder, out, pooling: dict, after=()):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    torch.manual_seed(1)
    modules = [Transformer(str(bert_folder)), Pooling(32, **pooling)]
    dim = 32 * (len(pooling["pooling_mode"]) if isinstance(pooling.get("pooling_mode"), list) else 1)
    for a in after:
        if a == "normalize":
            modules.append(Normalize())
        else:
            d = Dense(dim, a[0], activation_function=a[1], **a[2])
            with torch.no_grad():
                d.linear.weight.normal_(0, 0.3)
            modules.append(d)
            dim = a[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


def _reference(folder):
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    return st.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)


def _cos_rows(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


CASES = {
    "cls": ({"pooling_mode": "cls"}, ()),
    "cls-no-prompt": ({"pooling_mode": "cls", "include_prompt": False}, ()),
    "max": ({"pooling_mode": "max"}, ()),
    "mean": ({"pooling_mode": "mean", "include_prompt": True}, ()),
    "mean_sqrt_len_tokens": ({"pooling_mode": "mean_sqrt_len_tokens"}, ()),
    "lasttoken": ({"pooling_mode": "lasttoken"}, ()),
    "weightedmean": ({"pooling_mode": "weightedmean", "include_prompt": False}, ()),
    "cls+max": ({"pooling_mode": ["cls", "max"]}, ()),
    "dense-tanh": ({"pooling_mode": "cls"}, [(16, torch.nn.Tanh(), {})]),
    "dense-identity-normalize": ({"pooling_mode": "mean"}, [(12, torch.nn.Identity(), {"bias": False}), "normalize"]),
    "dense-residual-dense": ({"pooling_mode": "max"}, [(24, torch.nn.GELU(), {"use_residual": True}),
                                                       (8, torch.nn.Tanh(), {})]),
    "normalize": ({"pooling_mode": "cls"}, ["normalize"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_folder_matches_sentence_transformers(bert_folder, tmp_path, name):
    pooling, after = CASES[name]
    folder = _build(bert_folder, tmp_path / name, pooling, after)
    ref = _reference(folder)
    enc = lw.load(folder, device="cpu", dtype="float32")
    ours = enc.embed(TEXTS)
    assert ours.shape == ref.shape and enc.dim == ref.shape[1]
    cos = _cos_rows(ours, ref)
    assert cos.min() >= 0.99999, cos
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_the_modes_differ_so_the_comparison_can_fail(bert_folder, tmp_path):
    """CLS read as mean (the old bug) would fail the bound above: the reference tells the modes apart."""
    cls = _reference(_build(bert_folder, tmp_path / "cls", {"pooling_mode": "cls"}))
    mean = _reference(_build(bert_folder, tmp_path / "mean", {"pooling_mode": "mean"}))
    assert _cos_rows(cls, mean).min() < 0.999


def test_legacy_pooling_booleans(bert_folder, tmp_path):
    folder = _build(bert_folder, tmp_path / "legacy", {"pooling_mode": "max"})
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": True, "pooling_mode_mean_sqrt_len_tokens": False}))
    ref = _reference(folder)
    assert _cos_rows(lw.load(folder, device="cpu").embed(TEXTS), ref).min() >= 0.99999


def _refused(folder, needle):
    with pytest.raises(LengthwiseError, match=needle):
        lw.load(folder, device="cpu")


def test_unknown_modules_and_keys_are_refused(bert_folder, tmp_path):
    base = _build(bert_folder, tmp_path / "base", {"pooling_mode": "cls"}, [(16, torch.nn.Tanh(), {})])

    def variant(name):
        f = tmp_path / name
        shutil.copytree(base, f)
        return f

    f = variant("unknown-key")
    cfg = json.loads((f / "1_Pooling" / "config.json").read_text())
    (f / "1_Pooling" / "config.json").write_text(json.dumps({**cfg, "pooling_temperature": 2.0}))
    _refused(f, "'pooling_temperature' that lengthwise does not know")

    f = variant("bad-mode")
    (f / "1_Pooling" / "config.json").write_text(json.dumps({**cfg, "pooling_mode": "attention"}))
    _refused(f, "pooling_mode 'attention' is not one of")

    f = variant("unknown-module")
    mods = json.loads((f / "modules.json").read_text())
    mods.append({"idx": 3, "name": "3", "path": "3_LayerNorm", "type": "sentence_transformers.models.LayerNorm"})
    (f / "modules.json").write_text(json.dumps(mods))
    _refused(f, "LayerNorm.*not one lengthwise runs")

    f = variant("activation")
    dcfg = json.loads((f / "2_Dense" / "config.json").read_text())
    (f / "2_Dense" / "config.json").write_text(json.dumps({**dcfg, "activation_function": "my.module.Swish"}))
    _refused(f, "activation_function 'my.module.Swish'")

    f = variant("dense-key")
    (f / "2_Dense" / "config.json").write_text(json.dumps({**dcfg, "dropout": 0.1}))
    _refused(f, "'dropout' that lengthwise does not know")

    f = variant("dense-bin")
    (f / "2_Dense" / "model.safetensors").rename(f / "2_Dense" / "pytorch_model.bin")
    _refused(f, "no model.safetensors for its Dense module.*never loaded")

    f = variant("lowercase")
    sb = json.loads((f / "sentence_bert_config.json").read_text())
    (f / "sentence_bert_config.json").write_text(json.dumps({**sb, "do_lower_case": True}))
    _refused(f, "do_lower_case")

    f = variant("prompt")
    cs = json.loads((f / "config_sentence_transformers.json").read_text())
    (f / "config_sentence_transformers.json").write_text(json.dumps({**cs, "default_prompt_name": "query",
                                                                     "prompts": {"query": "query: "}}))
    _refused(f, "default prompt")

    f = variant("nested")
    (f / "1_Pooling" / "config.json").write_text("[" * 100000 + "]" * 100000)
    _refused(f, "not JSON that lengthwise reads|not valid JSON")
