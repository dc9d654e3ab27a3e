"""The algorithmic tasks, each a seeded generator and a solver that reads the prompt alone.

Papers: copy, reverse, sort, parity, addition (Kazemnejad et al. 2023, the PE study); count, mode and
copy-unique (Zhou et al. 2023, RASP-L); addition with reversed digits and index hints (Zhou et al. 2024);
duplicate_string, odds_first and bucket_sort (Ruoss et al. 2023); selective copy (Gu & Dao 2023, Mamba).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ...errors import LengthwiseError
from .base import LETTERS, AlgoTask
from .vocab import N_HINTS


@dataclass(frozen=True)
class Copy(AlgoTask):
    """Repeat a string of letters; unique=true draws distinct letters (RASP-L's copy-unique), so n <= 26."""
    name = "copy"
    size = "letters"
    unique: bool = False

    def max_length(self):
        return len(LETTERS) if self.unique else None

    def build(self, rng, n):
        s = rng.sample(LETTERS, n) if self.unique else [rng.choice(LETTERS) for _ in range(n)]
        return s, list(s)

    def solve(self, prompt):
        return list(prompt)


@dataclass(frozen=True)
class Reverse(AlgoTask):
    name = "reverse"
    size = "letters"

    def build(self, rng, n):
        s = [rng.choice(LETTERS) for _ in range(n)]
        return s, s[::-1]

    def solve(self, prompt):
        return [prompt[i] for i in range(len(prompt) - 1, -1, -1)]


@dataclass(frozen=True)
class DuplicateString(AlgoTask):
    """Ruoss et al. 2023: w -> ww."""
    name = "duplicate_string"
    size = "letters"

    def build(self, rng, n):
        s = [rng.choice(LETTERS[:2]) for _ in range(n)]
        return s, s + s

    def solve(self, prompt):
        return [*prompt, *prompt]


@dataclass(frozen=True)
class OddsFirst(AlgoTask):
    """Ruoss et al. 2023: the tokens at odd positions (1st, 3rd, ...), then those at even ones."""
    name = "odds_first"
    size = "letters"

    def build(self, rng, n):
        s = [rng.choice(LETTERS[:2]) for _ in range(n)]
        return s, s[0::2] + s[1::2]

    def solve(self, prompt):
        odd = [c for i, c in enumerate(prompt) if i % 2 == 0]
        return odd + [c for i, c in enumerate(prompt) if i % 2 == 1]


@dataclass(frozen=True)
class Sort(AlgoTask):
    """Sort letters drawn (with repeats) from the first `alphabet` letters."""
    name = "sort"
    size = "letters"
    alphabet: int = 26

    def check(self):
        if not 2 <= self.alphabet <= 26:
            raise LengthwiseError(f"task {self.name}: alphabet must be 2..26, got {self.alphabet}")

    def build(self, rng, n):
        s = [rng.choice(LETTERS[:self.alphabet]) for _ in range(n)]
        return s, sorted(s)

    def solve(self, prompt):
        counts = Counter(prompt)  # counting sort, not sorted(): a solver apart from the generator
        return [c for c in LETTERS if c in counts for _ in range(counts[c])]


@dataclass(frozen=True)
class BucketSort(Sort):
    """Ruoss et al. 2023: sort a string over an alphabet of 5 tokens."""
    name = "bucket_sort"
    alphabet: int = 5


@dataclass(frozen=True)
class Parity(AlgoTask):
    """Whether a bit string holds an odd number of ones: answer 1 or 0."""
    name = "parity"
    size = "bits"

    def build(self, rng, n):
        bits = [rng.choice("01") for _ in range(n)]
        return bits, [str(bits.count("1") % 2)]

    def solve(self, prompt):
        p = 0
        for b in prompt:
            p ^= b == "1"
        return [str(int(p))]


@dataclass(frozen=True)
class Count(AlgoTask):
    """RASP-L's count: from a start a and an end b, count a, a+1, ..., b; n is the number of terms."""
    name = "count"
    size = "terms"

    def build(self, rng, n):
        a = rng.randrange(0, 50)
        terms = [str(a + i) for i in range(n)]
        return [*str(a), ">", *str(a + n - 1)], list(",".join(terms))

    def solve(self, prompt):
        text = "".join(prompt)
        a, b = (int(x) for x in text.split(">"))
        out: list[str] = []
        k = a
        while k <= b:
            out += ([","] if out else []) + list(str(k))
            k += 1
        return out


@dataclass(frozen=True)
class Mode(AlgoTask):
    """RASP-L's mode: the most frequent letter of the string. The generator makes it a strict majority (it fills
    more than half the string), so it is unique; the solver finds the most frequent letter of any string."""
    name = "mode"
    size = "letters"
    alphabet: int = 8

    def check(self):
        if not 2 <= self.alphabet <= 26:
            raise LengthwiseError(f"task {self.name}: alphabet must be 2..26, got {self.alphabet}")

    def build(self, rng, n):
        letters = list(LETTERS[:self.alphabet])
        mode = rng.choice(letters)
        others = [c for c in letters if c != mode]
        k = rng.randint(n // 2 + 1, n) if n > 1 else 1  # more than half: no other letter can tie it
        s = [mode] * k + [rng.choice(others) for _ in range(n - k)]
        rng.shuffle(s)
        return s, [mode]

    def solve(self, prompt):
        counts: dict[str, int] = {}
        for c in prompt:
            counts[c] = counts.get(c, 0) + 1
        best = max(counts.values())
        return [c for c in counts if counts[c] == best][:1]


@dataclass(frozen=True)
class SelectiveCopy(AlgoTask):
    """Gu & Dao 2023: n letters scattered among n noise tokens (_); copy the letters in order."""
    name = "selective_copy"
    size = "letters"

    def build(self, rng, n):
        data = [rng.choice(LETTERS) for _ in range(n)]
        slots = sorted(rng.sample(range(2 * n), n))
        s = ["_"] * (2 * n)
        for i, c in zip(slots, data):
            s[i] = c
        return s, data

    def solve(self, prompt):
        return [c for c in prompt if c != "_"]


@dataclass(frozen=True)
class Addition(AlgoTask):
    """a + b with n digits each. reverse: digits least significant first, operands and sum alike (Lee et al.
    2023; Zhou et al. 2024). hints: each digit after an index-hint token naming its place (Zhou et al. 2024);
    the hints are a run of consecutive tokens from a random start, so all 128 are seen in training."""
    name = "addition"
    size = "digits"
    reverse: bool = False
    hints: bool = False

    def max_length(self):
        return N_HINTS - 1 if self.hints else None  # the sum may have n + 1 digits, each with its hint

    def build(self, rng, n):
        lo = 0 if n == 1 else 10 ** (n - 1)
        a, b = rng.randrange(lo, 10 ** n), rng.randrange(lo, 10 ** n)
        start = rng.randrange(0, N_HINTS - n) if self.hints else 0
        return (self._number(str(a), start) + ["+"] + self._number(str(b), start) + ["="],
                self._number(str(a + b), start))

    def _number(self, digits: str, start: int) -> list[str]:
        d = list(digits[::-1] if self.reverse else digits)
        if not self.hints:
            return d
        places = range(len(d)) if self.reverse else range(len(d) - 1, -1, -1)  # place 0: the units digit
        return [t for p, c in zip(places, d) for t in (f"<h{start + p}>", c)]

    def solve(self, prompt):
        body = prompt[:-1]  # drop "="
        plus = body.index("+")
        a, b = self._read(body[:plus]), self._read(body[plus + 1:])
        start = min(int(t[2:-1]) for t in prompt if t.startswith("<h")) if self.hints else 0
        out, carry = [], 0  # schoolbook addition, units first
        for i in range(max(len(a), len(b))):
            s = (a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) + carry
            out.append(str(s % 10))
            carry = s // 10
        if carry:
            out.append(str(carry))
        return self._number("".join(reversed(out)), start)

    def _read(self, toks: list[str]) -> list[int]:
        """Digits, units first."""
        d = [int(t) for t in toks if t.isdigit()]
        return d if self.reverse else d[::-1]
