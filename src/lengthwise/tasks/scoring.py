"""Scoring helpers shared by every task: case-insensitive, whitespace-normalized substring matching.

RULER scores its synthetic tasks the same way (an answer counts when it appears in the output).
"""
from __future__ import annotations


def normalize(text: str) -> str:
    """Case-folded, with each run of whitespace made one space."""
    return " ".join(text.casefold().split())


def contains(output: str, answer: str) -> bool:
    """Whether `answer` appears in `output`, ignoring case and whitespace differences."""
    return normalize(answer) in normalize(output)


def recall(output: str, answers) -> float:
    """The fraction of `answers` that appear in `output` (0/1 for a single answer)."""
    answers = list(answers)
    return sum(contains(output, a) for a in answers) / len(answers) if answers else 0.0
