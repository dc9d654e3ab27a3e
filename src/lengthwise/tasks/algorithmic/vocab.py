"""The lab's character-level vocabulary: one token per character, plus three delimiters and index-hint tokens.

    <s> prompt characters <sep> answer characters </s>

Loss and scoring see only the answer and its </s> (`Encoded.scored`): the prompt is given, never predicted.
Index hints (Zhou et al. 2024) are tokens of their own, <h0> ... <h127>, not characters.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import LengthwiseError

BOS, SEP, EOS = "<s>", "<sep>", "</s>"
CHARS = "0123456789abcdefghijklmnopqrstuvwxyz+=,_>|#"
N_HINTS = 128
HINTS = tuple(f"<h{i}>" for i in range(N_HINTS))
SYMBOLS: tuple[str, ...] = (BOS, SEP, EOS, *CHARS, *HINTS)
ID = {s: i for i, s in enumerate(SYMBOLS)}
SIZE = len(SYMBOLS)
DIGIT_IDS = tuple(ID[d] for d in "0123456789")


@dataclass(frozen=True)
class Encoded:
    ids: list[int]  # <s> prompt <sep> answer </s>
    answer_start: int  # index of the first answer token (just after <sep>)

    @property
    def scored(self) -> list[bool]:
        """Per token: whether it is an answer token (answer characters and </s>), the only ones predicted."""
        return [i >= self.answer_start for i in range(len(self.ids))]


def encode(prompt: list[str], answer: list[str]) -> Encoded:
    """Token ids of one sample; each element of prompt and answer is one symbol of the vocabulary."""
    try:
        ids = [ID[BOS], *(ID[s] for s in prompt), ID[SEP], *(ID[s] for s in answer), ID[EOS]]
    except KeyError as e:
        raise LengthwiseError(f"symbol {e.args[0]!r} is not in the lab's vocabulary") from None
    return Encoded(ids, len(prompt) + 2)


def decode(ids) -> str:
    return "".join(SYMBOLS[i] for i in ids)
