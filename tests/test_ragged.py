import pytest
import torch

from lengthwise import LengthwiseError, RaggedBatch


def test_from_lists_packs_without_padding():
    b = RaggedBatch.from_lists([[5, 6, 7], [8], [9, 10]])
    assert b.tokens.tolist() == [5, 6, 7, 8, 9, 10]
    assert b.cu_seqlens.dtype == torch.int32 and b.cu_seqlens.tolist() == [0, 3, 4, 6]
    assert b.positions.tolist() == [0, 1, 2, 0, 0, 1]
    assert (b.max_seqlen, b.num_seqs, b.num_tokens) == (3, 3, 6)
    assert b.last_index.tolist() == [2, 3, 5]
    assert b.seq_ids.tolist() == [0, 0, 0, 1, 2, 2]


def test_split_restores_sequences():
    b = RaggedBatch.from_lists([[1, 2], [3, 4, 5], [6]])
    parts = b.split(torch.arange(6)[:, None].expand(6, 4))
    assert [p[:, 0].tolist() for p in parts] == [[0, 1], [2, 3, 4], [5]]


def test_zero_length_sequence_is_an_error():
    with pytest.raises(LengthwiseError, match="sequence 1 is empty"):
        RaggedBatch.from_lists([[1], [], [2]])
    with pytest.raises(LengthwiseError, match="empty batch"):
        RaggedBatch.from_lists([])


def test_from_texts_uses_the_tokenizer():
    class Tok:
        def __call__(self, texts, **kw):
            return {"input_ids": [[len(w) for w in t.split()] for t in texts]}

    b = RaggedBatch.from_texts(["a bb ccc", "dddd"], Tok())
    assert b.tokens.tolist() == [1, 2, 3, 4] and b.cu_seqlens.tolist() == [0, 3, 4]
