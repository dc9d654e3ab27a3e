"""Issue 20: every id of a token-id list is an integer (a bool is not), checked over all the ids at once."""
import itertools
import random
import sys

import numpy as np
import pytest
import torch

from lengthwise import LengthwiseError
from lengthwise.ragged import RaggedBatch, packed_ids

from conftest import tiny_hf_causal


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import lengthwise as lw
    _, folder = tiny_hf_causal("llama", tmp_path_factory.mktemp("ids"))
    return lw.load(folder, device="cpu", dtype="float32")


@pytest.mark.parametrize("ids,needle", [
    ([[1, 2.7, 3]], "id 1 .* is 2.7"),
    ([[1, True, 3]], "id 1 .* is True"),
    ([[4, 5], [1, np.bool_(False), 3]], "id 3 .* is np.False_"),
    ([[1, 2.0, 3]], "is 2.0"),  # a whole float is still not an id
    ([[1, np.float32(2), 3]], "float32"),
    ([[1, torch.tensor(2.0), 3]], "tensor"),
    ([[1, [2], 3]], r"is \[2\]"),
    ([[1, "2", 3]], "is '2'"),
    ([[1, 2**70, 3]], "fit in 64 bits"),
])
def test_a_non_integer_inside_a_list_is_refused(tiny, ids, needle):
    for call in (tiny.logits, tiny.next_token_logits, lambda x: tiny.generate_ids(x, max_new_tokens=1),
                 RaggedBatch.from_lists):
        with pytest.raises(LengthwiseError, match="token ids must be integers.*" + needle):
            call(ids)


def test_integer_kinds_pack_to_the_same_ids():
    ids = [3, 17, 210, 0, 42]
    forms = [ids, tuple(ids), np.array(ids, dtype=np.uint8), torch.tensor(ids, dtype=torch.int16),
             list(torch.tensor(ids)), [np.int32(x) for x in ids], range(3, 4)]
    got = packed_ids(forms)
    assert got.dtype == np.int64 and got.tolist() == ids * 6 + [3]


def test_the_check_is_vectorized():
    """3,072 ragged lists (300k ids): the check runs in C, not as a Python loop per id. Counted, not timed: the
    profiler sees every Python-level call and every builtin called from Python, and the whole packing makes far
    fewer of them than there are ids: a few per sequence at most."""
    random.seed(0)
    seqs = [[random.randrange(30000) for _ in range(random.randrange(10, 200))] for _ in range(3072)]
    n = sum(map(len, seqs))
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event in ("call", "c_call")

    sys.setprofile(count)
    try:
        got = packed_ids(seqs)
    finally:
        sys.setprofile(None)
    assert got.tolist() == list(itertools.chain.from_iterable(seqs))
    assert calls < 3 * len(seqs) < n / 30, (calls, n)  # a few per sequence (the list check), none per id
    # the mixed-kind path (numpy ints inside lists) stays per-sequence at most, never per id
    mixed = [np.array(s[:5], dtype=np.int32) if i % 2 else s for i, s in enumerate(seqs[:256])]
    calls = 0
    sys.setprofile(count)
    try:
        got = packed_ids(mixed)
    finally:
        sys.setprofile(None)
    assert got.tolist() == [int(x) for s in mixed for x in s]
    assert calls < 40 * len(mixed), calls
