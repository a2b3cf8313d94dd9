"""BERT's character classes -- whitespace, control, punctuation, nonspacing mark, CJK -- lower-case and
NFD, exactly as the `tokenizers` package computes them (lesson 01, "Where Python and Rust disagree").

The reference is the `tokenizers` package, whose Rust code does not read Python's `unicodedata`: its
categories (control, nonspacing mark, punctuation) come from the `unicode_categories` crate (Unicode
8.0), NFD from `unicode-normalization-alignments` (Unicode 9.0), whitespace and lower-case from Rust's
standard library (Unicode 17.0), while Python 3.11 has Unicode 14.0. So the classes are not asked of
`unicodedata`: minift/tokenizer/unicode_tables.py holds the reference's own answer for every code
point, generated from the package by tools/make_unicode_tables.py, and test_unicode_tables in
tests/test_wordpiece.py runs every code point that UTF-8 can carry through both. The rules that use the classes
are in minift/tokenizer/wordpiece.py.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Sequence

from minift.tokenizer import unicode_tables

# Rust's char::is_whitespace (the Unicode White_Space property). Python's str.isspace differs: it also
# counts U+001C..U+001F, which BERT removes as control characters.
WHITESPACE = frozenset(chr(c) for c in unicode_tables.WHITESPACE)
ASCII_PUNCTUATION = frozenset(chr(c) for c in (*range(33, 48), *range(58, 65), *range(91, 97),
                                                *range(123, 127)))
# CJK Unified Ideographs and their extensions, plus the compatibility blocks (BERT's _is_chinese_char).
# `tokenizers` starts the fifth range at U+2B920 where Google's code has U+2B820; we follow `tokenizers`.
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def in_ranges(ch: str, ranges: Sequence[tuple[int, int]], firsts: Sequence[int]) -> bool:
    """Is ``ch`` in one of the sorted, inclusive (first, last) ``ranges``? ``firsts`` are their firsts:
    a binary search finds the last range starting at or before ``ch``."""
    i = bisect_right(firsts, ord(ch)) - 1
    return i >= 0 and ord(ch) <= ranges[i][1]


def _firsts(ranges: Sequence[tuple[int, int]]) -> list[int]:
    return [first for first, _ in ranges]


_CONTROL, _MARK, _PUNCTUATION = (_firsts(r) for r in (unicode_tables.CONTROL, unicode_tables.NONSPACING_MARK,
                                                     unicode_tables.PUNCTUATION))


def is_whitespace(ch: str) -> bool:
    return ch in WHITESPACE


def is_control(ch: str) -> bool:
    """Control (Cc), format (Cf) and private-use (Co) characters; tab and newlines are whitespace.

    Unassigned code points (Cn) are kept, as `tokenizers` does, so they reach WordPiece and become
    [UNK]; Google's original code removed them with the other C* categories.
    """
    return in_ranges(ch, unicode_tables.CONTROL, _CONTROL)


def is_punctuation(ch: str) -> bool:
    """BERT's punctuation: all non-alphanumeric ASCII symbols ("$", "+", "^" too) and Unicode P*."""
    return ch in ASCII_PUNCTUATION or in_ranges(ch, unicode_tables.PUNCTUATION, _PUNCTUATION)


def is_nonspacing_mark(ch: str) -> bool:
    """Category Mn: the accents NFD splits off a letter ("e" + U+0301), which strip_accents drops."""
    return in_ranges(ch, unicode_tables.NONSPACING_MARK, _MARK)


def is_cjk(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in CJK_RANGES)


def _lowercase_table() -> dict[int, str]:
    """Rust's char::to_lowercase as a `str.translate` table, from the generated runs."""
    table = {code: chr(code + delta) for first, last, step, delta in unicode_tables.LOWERCASE_RUNS
             for code in range(first, last + 1, step)}
    return table | unicode_tables.LOWERCASE_SPECIAL


LOWERCASE = _lowercase_table()  # code point -> its lower case, for str.translate
# NFD is Python's, except around the code points whose decomposition or combining class Rust's older
# normalization tables do not have (unicode_tables.NFD_OPAQUE): Rust keeps those as they are, and as
# it never moves a mark across them, the text between two of them is normalized on its own.
NFD_OPAQUE = re.compile("([" + "".join(f"{re.escape(chr(first))}-{re.escape(chr(last))}"
                                       for first, last in unicode_tables.NFD_OPAQUE) + "])")


def nfd(text: str) -> str:
    """Unicode normalization form D as `tokenizers` computes it (see NFD_OPAQUE)."""
    if NFD_OPAQUE.search(text) is None:
        return unicodedata.normalize("NFD", text)
    # re.split with a group keeps the separators: the odd items are the opaque characters themselves.
    parts = NFD_OPAQUE.split(text)
    return "".join(part if i % 2 else unicodedata.normalize("NFD", part) for i, part in enumerate(parts))
