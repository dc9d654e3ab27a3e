"""Algorithmic tasks: deterministic per seed, answers checked by each task's own plain-Python solver."""
import pytest

from lengthwise import LengthwiseError
from lengthwise.tasks.algorithmic import TASKS, get_task
from lengthwise.tasks.algorithmic.vocab import EOS, ID, SEP, decode

SPECS = [*TASKS, "copy:unique=true", "addition:reverse=true", "addition:hints=true",
         "addition:reverse=true,hints=true", "sort:alphabet=3"]


@pytest.mark.parametrize("spec", SPECS)
def test_deterministic_and_solved(spec):
    task = get_task(spec)
    top = task.max_length() or 60
    for n in (1, 2, 3, 7, 20, min(top, 45)):
        a, b = task.sample(n, 5), task.sample(n, 5)
        assert a == b  # the same seed, the same sample
        assert task.solve(list(a.prompt)) == list(a.answer), (spec, n, a)
        others = {task.sample(n, s) for s in range(12)}
        if n >= 3:
            assert len(others) > 1  # seeds differ
        if n >= 7:  # training draws are not the test draws
            assert [task.sample(n, k, stream="train") for k in range(4)] != [task.sample(n, k) for k in range(4)]


def test_solvers_are_not_the_generators():
    """The solver reads the prompt: a wrong answer is caught."""
    add = get_task("addition")
    s = add.sample(4, 0)
    assert add.solve(list(s.prompt)) == list(s.answer)
    assert add.solve(["1", "9", "+", "2", "5", "="]) == ["4", "4"]
    assert get_task("addition:reverse=true").solve(["9", "1", "+", "5", "2", "="]) == ["4", "4"]
    assert get_task("count").solve(list("8>11")) == list("8,9,10,11")
    assert get_task("parity").solve(list("1101")) == ["1"]
    assert get_task("odds_first").solve(list("abcde")) == list("acebd")
    assert get_task("mode").solve(list("abcbb")) == ["b"]
    assert get_task("sort").solve(list("cab")) == list("abc")
    assert get_task("selective_copy").solve(list("a__b_c")) == list("abc")


def test_hints_are_consecutive_places():
    s = get_task("addition:reverse=true,hints=true").sample(5, 3)
    hints = [t for t in s.prompt if t.startswith("<h")]
    first = [int(h[2:-1]) for h in hints[:5]]
    assert first == list(range(first[0], first[0] + 5))  # units digit first, each place its own hint
    assert all(t.isdigit() for t in s.prompt[1:10:2])  # hint, digit, hint, digit, ...


def test_encoding_delimits_the_answer():
    s = get_task("copy").sample(4, 0)
    e = s.encode()
    assert e.ids[e.answer_start - 1] == ID[SEP] and e.ids[-1] == ID[EOS]
    assert decode(e.ids[e.answer_start:-1]) == "".join(s.answer)
    assert e.scored == [False] * e.answer_start + [True] * (len(s.answer) + 1)


@pytest.mark.parametrize("spec,n", [("copy:unique=true", 27), ("copy", 0), ("addition:hints=true", 128),
                                    ("parity", -1)])
def test_lengths_a_task_cannot_make(spec, n):
    with pytest.raises(LengthwiseError, match="cannot make length"):
        get_task(spec).sample(n, 0)


def test_unknown_task_and_options():
    with pytest.raises(LengthwiseError, match="unknown algorithmic task 'copyy'"):
        get_task("copyy")
    with pytest.raises(LengthwiseError, match="alphabet must be"):
        get_task("sort:alphabet=40")
