"""Encoder.encode against sentence-transformers' encode on the real MiniLM folder; the texts -> vectors pipeline
against today's path (tokenize, then embed_ids), bit for bit."""
import itertools

import numpy as np
import pytest
import torch

import lengthwise as lw
from lengthwise import LengthwiseError
from lengthwise.encode import EmbedTiming

TEXTS = ["A short one.", "Packed sequences never pad, whatever their lengths are.", "x",
         "The quick brown fox jumps over the lazy dog " * 40,  # past the 256-token limit: cut, as there
         "héllo wörld, ünïcode 你好"]


@pytest.fixture(scope="module")
def pair(minilm_path):
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(minilm_path.parent if minilm_path.is_file() else minilm_path), device="cpu",
                             local_files_only=True)
    return lw.load("minilm-l6", device="cpu", dtype="float32"), st


def _kind(x):
    if isinstance(x, list):
        return ("list", len(x), _kind(x[0]) if x else None)
    if isinstance(x, np.ndarray):
        return ("ndarray", x.shape, str(x.dtype))
    return ("tensor", tuple(x.shape), str(x.dtype), x.device.type)


def _close(a, b, precision):
    if isinstance(a, list) and not a:
        assert isinstance(b, list) and not b
        return
    a = torch.stack(a) if isinstance(a, list) else torch.as_tensor(a)
    b = torch.stack(b) if isinstance(b, list) else torch.as_tensor(b)
    if a.numel() == 0:
        return
    if precision == "float32":
        cos = torch.nn.functional.cosine_similarity(a.reshape(-1, a.shape[-1]).double(), b.reshape(-1, b.shape[-1]).double())
        assert cos.min() >= 0.99999, cos
    else:  # quantized: a rounding boundary may fall either side for a handful of values
        assert (a.int() != b.int()).float().mean() < 0.01


FLAGS = [dict(convert_to_numpy=n, convert_to_tensor=t, normalize_embeddings=z, truncate_dim=d)
         for n, t, z, d in itertools.product([True, False], [False, True], [False, True], [None, 64])]


@pytest.mark.parametrize("inputs", ["one", "many", "empty"])
def test_encode_matches_sentence_transformers(pair, inputs):
    enc, st = pair
    sentences = {"one": TEXTS[1], "many": TEXTS, "empty": []}[inputs]
    for kw in FLAGS + [dict(precision=p) for p in ("int8", "uint8", "binary", "ubinary")] + [
            dict(precision="ubinary", convert_to_tensor=True), dict(precision="binary", convert_to_numpy=False),
            dict(output_value="token_embeddings"), dict(batch_size=2)]:
        if inputs == "one" and kw.get("precision", "float32").endswith("int8"):
            with pytest.raises(LengthwiseError, match="at least 2"):
                enc.encode(sentences, **kw)
            continue
        ours, ref = enc.encode(sentences, **kw), st.encode(sentences, **kw)
        assert _kind(ours) == _kind(ref), kw
        if inputs != "empty" or kw.get("convert_to_numpy") is False:
            _close(ours if not isinstance(ours, list) or not ours or ours[0].ndim == 1 else torch.cat(ours),
                   ref if not isinstance(ref, list) or not ref or ref[0].ndim == 1 else torch.cat(ref),
                   kw.get("precision", "float32"))


def test_the_comparison_can_fail(pair):
    """truncate_dim without renormalizing differs from normalizing: the bound tells flags apart."""
    enc, st = pair
    a = torch.tensor(enc.encode(TEXTS, truncate_dim=32))
    b = torch.tensor(st.encode(TEXTS, truncate_dim=32, normalize_embeddings=True))
    assert not torch.allclose(a, b, atol=1e-3)
    assert not np.allclose(enc.encode(TEXTS, prompt="query: "), enc.encode(TEXTS), atol=1e-3)


def test_pipeline_is_todays_path_bit_for_bit(pair):
    enc, _ = pair
    texts = [t * (i % 3 + 1) for i, t in enumerate(TEXTS * 120)]  # 600 texts: two chunks, many groups
    old = enc.embed_ids(enc.tokenize(texts), max_tokens_per_forward=2048, truncate=True)
    timing = EmbedTiming()
    new = enc.embed(texts, truncate=True, max_tokens_per_forward=2048, timing=timing)
    assert np.array_equal(old, new)
    d = timing.as_dict()
    assert d["texts"] == len(texts) and d["tokens"] == sum(min(len(s), 256) for s in enc.tokenize(texts))
    assert all(d[k] > 0 for k in ("tokenize", "pack", "forward", "pool", "wall"))


def test_prompt_names_and_query_document_as_sentence_transformers(pair, tmp_path, minilm_path):
    """prompt_name looks the prompt up as sentence-transformers does (its built-in empty "query" and "document",
    or the folder's own prompts), encode_query / encode_document pick theirs, and prompt= wins over a name."""
    enc, st = pair
    for kw in (dict(prompt_name="query"), dict(prompt_name="document"), dict(prompt="query: ", prompt_name="query")):
        _close(enc.encode(TEXTS, **kw), st.encode(TEXTS, **kw), "float32")
    _close(enc.encode_query(TEXTS), st.encode_query(TEXTS), "float32")
    _close(enc.encode_document(TEXTS), st.encode_document(TEXTS), "float32")
    # a folder naming its own prompts
    import json
    import shutil
    from sentence_transformers import SentenceTransformer
    src = minilm_path.parent if minilm_path.is_file() else minilm_path
    folder = tmp_path / "m"
    shutil.copytree(src, folder)
    cfg = json.loads((folder / "config_sentence_transformers.json").read_text())
    cfg["prompts"] = {"query": "query: ", "passage": "passage: "}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(cfg))
    ours, ref = lw.load(str(folder), device="cpu", dtype="float32"), SentenceTransformer(str(folder), device="cpu")
    for call in (lambda m: m.encode(TEXTS, prompt_name="passage"), lambda m: m.encode_query(TEXTS),
                 lambda m: m.encode_document(TEXTS)):
        _close(call(ours), call(ref), "float32")
    assert not np.allclose(ours.encode_query(TEXTS), ours.encode(TEXTS))  # the prompt does change the vectors
    with pytest.raises(LengthwiseError, match="prompt_name 'nope' is not one of this model's prompts"):
        enc.encode(TEXTS, prompt_name="nope")


def test_bad_input_is_one_line(pair):
    enc, _ = pair
    for call, needle in [(lambda: enc.encode(TEXTS, batch_size=0), "batch_size must be"),
                         (lambda: enc.encode(TEXTS, precision="int4"), "precision 'int4'"),
                         (lambda: enc.encode(TEXTS, truncate_dim=999), "truncate_dim must be"),
                         (lambda: enc.encode(TEXTS, output_value=None), "output_value None"),
                         (lambda: enc.encode(["a", 3]), "input 1 is int"),
                         (lambda: enc.encode(7), "a string or a list of strings"),
                         (lambda: enc.encode(TEXTS, pool=None), "pool is not supported here"),
                         (lambda: enc.embed([TEXTS[3]]), "input 0 has 362 tokens, over the 256")]:
        with pytest.raises(LengthwiseError, match=needle) as e:
            call()
        assert "\n" not in str(e.value)


def test_from_hf_minilm_encodes_as_sentence_transformers(pair, minilm_path):
    """An HF BertModel shared through lw.from_hf keeps requires_grad on its weights: embed and encode still run
    (no autograd history in what they return) and match sentence-transformers."""
    import transformers
    _, st = pair
    folder = minilm_path.parent if minilm_path.is_file() else minilm_path
    hf = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert any(p.requires_grad for p in hf.parameters())
    enc = lw.from_hf(hf, tok)
    want = st.encode(TEXTS[:3], convert_to_tensor=True)
    got = enc.encode(TEXTS[:3], convert_to_tensor=True)
    assert not got.requires_grad and got.grad_fn is None
    assert torch.nn.functional.cosine_similarity(got, want).min() >= 0.99999
    emb = enc.embed(TEXTS[:3])
    assert isinstance(emb, np.ndarray)
    assert torch.nn.functional.cosine_similarity(torch.from_numpy(emb), want).min() >= 0.99999
    # the folder's own head (mean pooling + Normalize, 256 tokens): the same vectors, not only the same directions
    assert (enc.normalize, enc.max_seq_length) == (True, st.max_seq_length)
    assert torch.allclose(torch.from_numpy(emb), want, atol=1e-5)
