"""The library's own input rules: misuse raises LengthwiseError naming the fix, never a silent wrong answer.

Each case was a real defect: float ids cut to ints, a string split into characters, an id past the
vocabulary failing deep in the embedding, a truthy "false" turning a gate on, a task option that hung.
"""
import math

import numpy as np
import pytest
import torch

import lengthwise as lw
from lengthwise import LengthwiseError
from lengthwise.evaluation import EvalConfig
from lengthwise.positions import Giraffe, SelfExtend, YaRN
from lengthwise.report import report
from lengthwise.tasks import get_task

from conftest import tiny_hf_causal


@pytest.fixture(scope="module")
def minilm():
    return lw.load("minilm-l6", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    hf, folder = tiny_hf_causal("llama", tmp_path_factory.mktemp("api"))
    return hf, lw.load(folder, device="cpu", dtype="float32")


@pytest.mark.parametrize("ids,needle", [
    ([[1.9, 2.9]], "not a sequence of integer token ids"),
    ([np.array([1.0, 2.0])], "not a sequence of integer token ids"),
    ([torch.tensor([1.0, 2.0])], "not a sequence of integer token ids"),
    ([[1, 211]], "token id 211 is outside this model's vocabulary 0..210"),
    ([[5], [-1]], "token id -1 is outside"),
    ([[1, 2**64]], "token ids must be integers that fit in 64 bits"),
    ([[1, None, 2]], "token ids must be integers"),
    ([[1, 2**63 - 1]], "token id 9223372036854775807 is outside"),
    ([1, 2, 3], "input 0 is not a sequence"),
    ("hello", "not str (one string is not a list of them"),
    ([["a", "b"]], "not a sequence of integer token ids"),
])
def test_bad_token_ids_are_named(tiny, ids, needle):
    _, lm = tiny
    for call in (lm.logits, lm.next_token_logits, lambda x: lm.generate_ids(x, max_new_tokens=1)):
        with pytest.raises(LengthwiseError, match=needle.replace("(", r"\(").replace("..", r"\.\.")):
            call(ids)


def test_good_ids_of_any_integer_kind_give_hf_logits(tiny):
    hf, lm = tiny
    ids = [3, 17, 210, 0, 42]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    for form in (ids, np.array(ids, dtype=np.int32), torch.tensor(ids), torch.tensor(ids, dtype=torch.int16),
                 list(torch.tensor(ids))):
        got = lm.logits([form, [7]])[0]
        assert torch.allclose(got, ref, atol=1e-5), form


def test_prompts_are_one_kind_and_a_string_is_not_a_list(tiny, smol):
    with pytest.raises(LengthwiseError, match="wrap it in"):
        smol.generate("hello", max_new_tokens=1)
    with pytest.raises(LengthwiseError, match="prompt 1 is token ids while prompt 0 is text"):
        smol.generate(["hello", [1, 2]], max_new_tokens=1)
    with pytest.raises(LengthwiseError, match="input 1 is NoneType, not text"):
        smol.tokenize(["a", None])
    with pytest.raises(LengthwiseError, match="max_new_tokens must be an integer"):
        smol.generate(["a"], max_new_tokens=1.5)
    for kw, needle in (({"seed": 1.5, "temperature": 0.5}, "seed must be an integer"),
                       ({"temperature": "0.5"}, "temperature must be a number")):
        with pytest.raises(LengthwiseError, match=needle):
            smol.generate(["a"], max_new_tokens=1, **kw)
    assert smol.tokenize([]) == [] and smol.generate([], max_new_tokens=1) == []


def test_embed_keeps_an_input_that_fits_as_given_under_truncate(minilm):
    ids = [101, 7592, 2088]  # no [SEP] at the end, and it fits: truncate must not touch it
    a, b = minilm.embed_ids([ids], truncate=True), minilm.embed_ids([ids])
    assert np.array_equal(a, b)
    long = [101] + [7592] * 300 + [102]  # cut to 256 tokens, still ending with [SEP]
    cut = minilm.embed_ids([long], truncate=True)
    assert np.allclose(cut, minilm.embed_ids([long[:255] + [102]]), atol=1e-6)
    with pytest.raises(LengthwiseError, match="wrap it in"):
        minilm.embed("hello world")
    assert minilm.embed([]).shape == (0, 384)


def test_schemes_built_in_python_follow_the_parsers_types():
    for scheme, needle in ((YaRN(factor=4, beyond="false"), "beyond must be true or false"),
                           (YaRN(dynamic="no"), "dynamic must be true or false"),
                           (SelfExtend(group=2.5, window=100), "group must be an integer"),
                           (Giraffe(factor=math.inf), "factor must be a finite number"),
                           (YaRN(factor="4"), "factor must be a finite number")):
        with pytest.raises(LengthwiseError, match=needle):
            lw.load("smollm2-135m", device="cpu", positions=scheme)
    with pytest.raises(LengthwiseError, match="dtype torch.int64 is not one lengthwise runs in"):
        lw.load("smollm2-135m", device="cpu", dtype=torch.int64)


def test_task_options_that_would_hang_or_repeat_are_refused():
    for spec in ("frequent_words:alpha=inf", "frequent_words:alpha=nan", "frequent_words:alpha=40"):
        with pytest.raises(LengthwiseError, match=r"alpha must be in \(1, 5\]"):
            get_task(spec)
    with pytest.raises(LengthwiseError, match="option 'haystack' is given twice"):
        get_task("niah_single:haystack=noise,haystack=essay")
    with pytest.raises(LengthwiseError, match="a task is named by a string"):
        get_task(None)
    task = get_task("passkey")
    for length, depth, needle in ((math.inf, 50, "length must be a positive integer"),
                                  (512, "50", "depth must be a number"), (512, True, "depth must be a number")):
        with pytest.raises(LengthwiseError, match=needle):
            task.make(lambda prompt, prefix: [0] * len(prompt.split()), length, depth, 0)


@pytest.mark.parametrize("kw,needle", [
    ({"tasks": "passkey"}, "tasks must be a list of task names"),
    ({"lengths": [256.5]}, "lengths must be a list of whole token counts"),
    ({"lengths": 256}, "lengths must be a list"),
    ({"depths": []}, "depths must be a non-empty list"),
    ({"depths": [math.nan]}, "depths must be a non-empty list"),
    ({"samples": 2.5}, "samples must be a whole number"),
])
def test_eval_configs_of_the_wrong_shape(kw, needle):
    base = {"model": "m", "tasks": ["passkey"], "lengths": [512], "depths": [0.0]}
    with pytest.raises(LengthwiseError, match=needle):
        EvalConfig(**{**base, **kw})


def test_report_skips_scores_and_depths_out_of_range(tmp_path):
    import json
    rec = dict(task="passkey", length=1024, sample=0, method="none", backend="lengthwise", model="m")
    lines = [dict(rec, id="a", depth=0.0, score=1.0), dict(rec, id="b", depth=0.0, score=5.0),
             dict(rec, id="c", depth=500.0, score=1.0), dict(rec, id="d", depth=50.0, score=-1)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = report(path, tmp_path / "p")
    assert [r["accuracy"] for r in out["table"]] == [1.0]
    assert sum("outside 0-1" in w for w in out["warnings"]) == 2 and any("0-100" in w for w in out["warnings"])
    with pytest.raises(LengthwiseError, match="no results file given"):
        report([])
