"""A checkpoint's GGUF metadata and its tokenizer are read once per process per file, and read again once the
file changes; every load gets a tokenizer of its own."""
import os
import shutil

import gguf
import numpy as np
import pytest

import lengthwise as lw
from lengthwise.models import load


def test_gguf_is_parsed_once_per_file_and_again_when_it_changes(smol_path, tmp_path, monkeypatch):
    copy = tmp_path / "m.gguf"
    shutil.copyfile(smol_path, copy)
    made = []
    real = load._parse_gguf

    def counting(path):
        made.append(path)
        return real(path)

    monkeypatch.setattr(load, "_parse_gguf", counting)
    assert load.trained_context(copy) == 8192
    a = lw.load(str(copy), device="cpu", dtype="float32")
    # one parse for the context, the weights and the choice of tokenizer
    assert made == [copy.resolve()], made
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the same bytes, another mtime: read again
    b = lw.load(str(copy), device="cpu", dtype="float32")
    assert len(made) == 2, made
    lw.load(str(copy), device="cpu", dtype="float32")
    assert len(made) == 2, made
    ids = [[1, 2, 3, 4]]
    assert (a.logits(ids)[0] == b.logits(ids)[0]).all()


def test_transformers_gguf_reader_gives_what_gguf_reader_gives(smol_path):
    """The fast path (transformers' own GGUF reader) against gguf's GGUFReader: the same metadata (gguf's
    GGUF.* header pseudo-fields aside), and every tensor's type, shape, dtype and bytes."""
    fast = load._parse_gguf_fast(smol_path)
    if fast is None:
        pytest.skip("this transformers has no GGUF reader of its own (before 5.25): gguf's reader is the only path")
    reader = gguf.GGUFReader(str(smol_path))
    slow = load.GGUFFile(load._gguf_fields(reader), tuple(reader.tensors))
    assert fast.fields == {k: v for k, v in slow.fields.items() if not k.startswith("GGUF.")}
    assert all(type(fast.fields[k]) is type(slow.fields[k]) for k in fast.fields)
    assert "tokenizer.chat_template" in fast.fields and "tokenizer.ggml.tokens" not in fast.fields
    assert len(fast.tensors) == len(slow.tensors) == 272
    for f, s in zip(fast.tensors, slow.tensors):
        assert (f.name, f.tensor_type, f.shape) == (s.name, s.tensor_type, tuple(int(d) for d in s.shape))
        assert f.data.shape == s.data.shape and f.data.dtype == s.data.dtype
        assert np.array_equal(f.data, s.data), f.name


def test_truncated_gguf_fails_on_both_readers(smol_path, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smol_path.read_bytes()[:50_000_000])
    assert load._parse_gguf_fast(cut) is None  # gguf's reader then says what is wrong
    with pytest.raises(lw.LengthwiseError, match="corrupted or truncated GGUF file"):
        load.open_gguf(cut)


def test_direct_gguf_tokenizer_is_autotokenizers(smol_path):
    """The llama GGUF tokenizer taken without AutoTokenizer's config detour is the one AutoTokenizer builds:
    the same class, vocabulary and rules, special tokens, chat template and encodings."""
    from transformers import AutoTokenizer
    direct = load._gguf_tokenizer_class(smol_path)
    if direct is None:
        pytest.skip("this transformers maps llama to a tokenizer class of its own: AutoTokenizer is the only path")
    a = AutoTokenizer.from_pretrained(str(smol_path.parent), gguf_file=smol_path.name, local_files_only=True)
    b = direct.from_pretrained(str(smol_path.parent), gguf_file=smol_path.name, local_files_only=True)
    assert type(a) is type(b)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert a.special_tokens_map == b.special_tokens_map and a.init_kwargs == b.init_kwargs
    assert a.chat_template == b.chat_template and a.chat_template
    for text in ("Hello world", " leading space", "é日本語 \n\t x", "<|im_start|>user\nhi<|im_end|>"):
        assert a(text)["input_ids"] == b(text)["input_ids"]
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (a.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            == b.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))


def test_each_load_gets_its_own_tokenizer(smol_path):
    a = lw.load("smollm2-135m", device="cpu", dtype="float32")
    b = lw.load("smollm2-135m", device="cpu", dtype="float32")
    assert a.tokenizer is not b.tokenizer
    a.tokenizer.padding_side = "left"
    a.tokenizer.add_tokens(["<lengthwise-test>"])
    assert b.tokenizer.padding_side == "right" and len(b.tokenizer) == len(a.tokenizer) - 1
    assert a.tokenizer("hello world")["input_ids"] == b.tokenizer("hello world")["input_ids"]
