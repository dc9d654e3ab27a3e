"""Issue 20: every id of a token-id list is an integer (a bool is not), checked over all the ids at once."""
import itertools
import random
import time

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
    """3,072 ragged lists (300k ids): the check costs what one numpy conversion does, not a loop per id."""
    random.seed(0)
    seqs = [[random.randrange(30000) for _ in range(random.randrange(10, 200))] for _ in range(3072)]
    n = sum(map(len, seqs))

    def best(f):
        out = []
        for _ in range(5):
            t = time.perf_counter()
            f()
            out.append(time.perf_counter() - t)
        return min(out)

    ours = best(lambda: packed_ids(seqs))
    loop = best(lambda: [isinstance(x, int) and not isinstance(x, bool) for x in itertools.chain.from_iterable(seqs)])
    assert packed_ids(seqs).shape == (n,)
    assert ours < loop, (ours, loop)  # a per-id Python check alone costs more than the whole packing
