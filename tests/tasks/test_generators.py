"""Task generators with the real smollm2 tokenizer: determinism, length in the model's tokens, depth."""
import hashlib
import os
import subprocess
import sys

import pytest

from lengthwise.models.load import load_tokenizer, resolve
from lengthwise.tasks import TASKS, get_task

def words(prompt, prefix):
    return (prompt + "\n" + prefix).split()


NEEDLE_TASKS = ["passkey", "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery",
                "variable_tracking", "threads", "confusing_facts"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(resolve("smollm2-135m"))


@pytest.fixture(scope="module")
def render(tok):
    return lambda prompt, prefix: tok(prompt + "\n" + prefix)["input_ids"]


@pytest.fixture(scope="module")
def chat_render(tok):
    def render(prompt, prefix):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True)["input_ids"]
        return list(ids) + tok(prefix, add_special_tokens=False)["input_ids"]
    return render


def check_sample(s, render, length):
    assert abs(s.n_tokens - length) <= 0.02 * length, (s.task, length, s.n_tokens)
    assert s.n_tokens == len(render(s.prompt, s.answer_prefix))
    assert s.answers and all(a in s.prompt for a in s.answers)  # every answer is findable in the input
    assert s.length == length and s.max_new_tokens == TASKS[s.task].max_new_tokens


@pytest.mark.parametrize("name", TASKS)
def test_same_seed_same_bytes(name, render):
    a, b = (get_task(name).make(render, 1000, 40, seed=7) for _ in range(2))
    assert a.prompt.encode() == b.prompt.encode() and a == b
    c = get_task(name).make(render, 1000, 40, seed=8)
    assert c.prompt != a.prompt and c.answers != a.answers


@pytest.mark.parametrize("length", [1024, 2048, 4096])
@pytest.mark.parametrize("name", TASKS)
def test_length_in_model_tokens(name, length, render):
    check_sample(get_task(name).make(render, length, 50, seed=1), render, length)


@pytest.mark.parametrize("name", TASKS)
def test_length_with_chat_template(name, chat_render):
    s = get_task(name).make(chat_render, 2048, 50, seed=2)
    check_sample(s, chat_render, 2048)


@pytest.mark.parametrize("spec", ["passkey", "niah_single", "niah_single:haystack=noise"])
def test_length_32k(spec, render):
    check_sample(get_task(spec).make(render, 32768, 50, seed=3), render, 32768)


@pytest.mark.parametrize("spec", ["niah_multikey:haystack=noise", "variable_tracking:num_chains=3,num_hops=2",
                                  "common_words:freq_common=8,freq_uncommon=2", "frequent_words:alpha=1.5",
                                  "threads:num_hops=2,num_distractors=0", "confusing_facts:num_distractors=8"])
def test_options_build(spec, render):
    s = get_task(spec).make(render, 4096, 50, seed=4)
    check_sample(s, render, 4096)
    assert s.options == get_task(spec).options()


@pytest.mark.parametrize("name", NEEDLE_TASKS)
def test_needle_follows_depth(name, render):
    where = []
    for depth in (0, 25, 50, 75, 100):
        s = get_task(name).make(render, 2048, depth, seed=5)
        hay = s.prompt.split("\n\n")[1]
        assert len(hay) == s.meta["haystack_chars"]
        needle = hay[s.meta["needle_char"]:].split(". ")[0]
        first = {"variable_tracking": f"VAR {s.answers[0]} =", "threads": s.meta.get("thread", [""])[0]}
        assert first.get(name, s.answers[0]) in needle, (name, depth, needle)
        where.append(s.meta["needle_char"] / len(hay))
    assert where == sorted(where) and where[0] < 0.02 and where[-1] > 0.95, where


def test_passkey_position_in_prompt(render):
    pos = []
    for depth in (0, 50, 100):
        s = get_task("passkey").make(render, 4096, depth, seed=6)
        pos.append(s.prompt.index(s.answers[0]) / len(s.prompt))
    assert pos[0] < 0.05 and 0.4 < pos[1] < 0.6 and pos[2] > 0.95, pos


def test_same_bytes_in_another_process():
    """String seeds, never the salted hash(): a fresh process with another hash seed builds the same prompt."""
    code = ("from lengthwise.tasks import get_task; import hashlib, sys; "
            "w = lambda p, a: (p + '\\n' + a).split(); "
            "sys.stdout.write(hashlib.sha256(''.join(get_task(n).make(w, 1500, 30, 9).prompt for n in %r).encode())"
            ".hexdigest())" % list(TASKS))
    here = hashlib.sha256("".join(get_task(n).make(words, 1500, 30, 9).prompt for n in TASKS).encode()).hexdigest()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert out == here


@pytest.mark.parametrize("name", ["passkey", "niah_single", "niah_multiquery", "variable_tracking", "common_words"])
def test_a_cell_at_the_trained_context_keeps_its_answer_inside_it(name, chat_render):
    """RULER's rule: on a model trained to 8192 tokens, an 8k cell's prompt plus its answer fit in 8192."""
    task = get_task(name)
    budget = task.max_new_tokens
    free = [task.make(chat_render, 8192, d, seed=s) for d in (0, 50, 100) for s in range(3)]
    kept = [task.make(chat_render, 8192, d, seed=s, context=8192) for d in (0, 50, 100) for s in range(3)]
    for a, b in zip(free, kept):
        check_sample(b, chat_render, 8192)
        assert b.n_tokens + budget <= 8192, (name, b.n_tokens)
        if a.n_tokens + budget <= 8192:  # the free fit already fitted: the very same prompt
            assert a == b
        else:  # cut to less filler, close under the ceiling (the edge itself: test_the_cut_is_...)
            assert b.meta["units"] < a.meta["units"] and b.n_tokens + budget > 8192 - 0.01 * 8192
    assert any(a.n_tokens + budget > 8192 for a in free), "no case exercised the cut"


def test_the_context_leaves_other_lengths_alone(render):
    task = get_task("niah_single")
    for n in (4096, 8000, 16384):  # below the 2% window, or past the context (the beyond-context check's concern)
        assert task.ceiling(n, 8192) is None
        assert task.make(render, n, 30, seed=2, context=8192) == task.make(render, n, 30, seed=2)
    assert task.ceiling(8192, 8192) == 8192 - task.max_new_tokens
    assert task.ceiling(8192, None) is None


def test_an_answer_longer_than_the_tolerance_sizes_the_prompt_as_ruler_does(render):
    """Trained to exactly the length, with a 120-token answer (over 2% of 1024): the prompt takes what is left."""
    s = get_task("common_words").make(render, 1024, 50, seed=0, context=1024)
    assert 0.98 * (1024 - 120) <= s.n_tokens <= 1024 - 120 and s.length == 1024
    assert s.n_tokens == len(render(s.prompt, s.answer_prefix))


def test_no_room_for_the_fixed_parts_is_one_line(render):
    from lengthwise import LengthwiseError
    with pytest.raises(LengthwiseError, match=r"^task common_words: length 600 \(with its answer, at most 480 within "
                                              r"the trained context\) is too small; its fixed parts already take \d+ tokens$"):
        get_task("common_words").make(render, 600, 50, seed=0, context=600)


def test_the_cut_is_a_measured_count_that_fits_in_few_renders():
    """Tokens per unit that change sharply inside the bracket: the cut still returns a measured count at the edge,
    in O(log) renders (secant steps, bisection when one fails to halve the bracket)."""
    import math
    from lengthwise.tasks.base import _cut, fit

    def measure(n):
        return 4 * n if n <= 2000 else 8000 + (n - 2000) // 4

    calls = []
    seen = {0: 0, 6000: measure(6000)}
    n = _cut(lambda k: calls.append(k) or seen.setdefault(k, measure(k)), seen, 8160)
    assert measure(n) <= 8160 < measure(n + 1) and n in calls
    assert len(calls) <= 2 * math.ceil(math.log2(6000)), len(calls)
    n = fit(measure, 8192, 0, 1.4, "x", top=8160)  # through fit too
    assert measure(n) <= 8160 < measure(n + 1)
