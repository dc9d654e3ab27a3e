"""Scorers on hand-written outputs; samples come from a whitespace "tokenizer" (no model needed)."""
import pytest

from lengthwise.tasks import get_task
from lengthwise.tasks.scoring import contains, normalize, recall


def words(prompt, prefix):
    return (prompt + "\n" + prefix).split()


def sample(spec, length=600, seed=0):
    return get_task(spec).make(words, length, 50, seed)


def test_helpers():
    assert normalize("  The\tPass \n KEY ") == "the pass key"
    assert contains("The pass key is 12345.", "12345")
    assert not contains("The pass key is 1234.", "12345")
    assert recall("alpha and beta", ["ALPHA", "Beta", "gamma", "delta"]) == 0.5
    assert recall("anything", []) == 0.0


def test_case_and_whitespace():
    assert contains("OUR ANSWER:  Amber-\tFalcon", "amber- falcon")
    s = sample("common_words")
    assert get_task("common_words").score("\n".join(w.upper() for w in s.answers), s) == 1.0


def test_exact_single_answer():
    t, s = get_task("passkey"), sample("passkey")
    (key,) = s.answers
    assert t.score(f" {key}. That is the pass key.", s) == 1.0
    assert t.score(" 00000", s) == 0.0
    assert t.score(f" {key[:-1]}", s) == 0.0


@pytest.mark.parametrize("name", ["niah_single", "niah_multikey", "threads"])
def test_single_answer_is_zero_or_one(name):
    t, s = get_task(name), sample(name, 1000)
    assert len(s.answers) == 1
    assert t.score(f"It is {s.answers[0]}", s) == 1.0 and t.score("I do not know.", s) == 0.0


def test_multivalue_partial_recall():
    t, s = get_task("niah_multivalue"), sample("niah_multivalue")
    assert len(s.answers) == 4
    assert t.score(f" {s.answers[0]}, {s.answers[2]} and 1234567.", s) == 0.5
    assert t.score(", ".join(s.answers), s) == 1.0


def test_multiquery_recall():
    t, s = get_task("niah_multiquery"), sample("niah_multiquery")
    assert t.score(" ".join(s.answers[:3]), s) == 0.75


def test_confusing_facts_distractor_scores_zero():
    t, s = get_task("confusing_facts"), sample("confusing_facts", 1000)
    true, fake = s.answers[0], s.meta["distractors"]
    assert len(fake) == 4 and true not in fake
    assert t.score(f" {true}.", s) == 1.0
    assert t.score(f" {true}, or maybe {fake[2]}.", s) == 0.0
    assert t.score(f" {fake[0]}.", s) == 0.0


def test_variable_tracking_recall():
    t, s = get_task("variable_tracking"), sample("variable_tracking")
    assert len(s.answers) == 5
    assert t.score(" ".join(s.answers[:3]), s) == pytest.approx(0.6)
    assert t.score(" ".join(s.answers).lower(), s) == 1.0
    assert t.score(" ".join(s.meta["other_chains"]), s) == 0.0


def test_frequent_words_recall():
    t, s = get_task("frequent_words"), sample("frequent_words")
    assert t.score(f"{s.answers[1]}, {s.answers[0]}", s) == pytest.approx(2 / 3)
