"""A checkpoint's GGUF metadata and its tokenizer are read once per process per file, and read again once the
file changes; every load gets a tokenizer of its own."""
import os
import shutil

import gguf

import lengthwise as lw
from lengthwise.models import load


def test_gguf_is_parsed_once_per_file_and_again_when_it_changes(smol_path, tmp_path, monkeypatch):
    copy = tmp_path / "m.gguf"
    shutil.copyfile(smol_path, copy)
    made = []
    real = gguf.GGUFReader

    class Counting(real):
        def __init__(self, *a, **kw):
            made.append(a[0])
            super().__init__(*a, **kw)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    assert load.trained_context(copy) == 8192
    a = lw.load(str(copy), device="cpu", dtype="float32")
    # one parse for the context and the weights; transformers' tokenizer conversion reads the file itself, once
    assert made == [str(copy.resolve()), str(copy)], made
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the same bytes, another mtime: read again
    b = lw.load(str(copy), device="cpu", dtype="float32")
    assert len(made) == 4, made
    lw.load(str(copy), device="cpu", dtype="float32")
    assert len(made) == 4, made
    ids = [[1, 2, 3, 4]]
    assert (a.logits(ids)[0] == b.logits(ids)[0]).all()


def test_each_load_gets_its_own_tokenizer(smol_path):
    a = lw.load("smollm2-135m", device="cpu", dtype="float32")
    b = lw.load("smollm2-135m", device="cpu", dtype="float32")
    assert a.tokenizer is not b.tokenizer
    a.tokenizer.padding_side = "left"
    a.tokenizer.add_tokens(["<lengthwise-test>"])
    assert b.tokenizer.padding_side == "right" and len(b.tokenizer) == len(a.tokenizer) - 1
    assert a.tokenizer("hello world")["input_ids"] == b.tokenizer("hello world")["input_ids"]
