"""Writes minift/tokenizer/unicode_tables.py: the character classes of the `tokenizers` package's BERT
pipeline, asked of the installed package one code point at a time (lesson 01).

    PYTHONPATH=$PWD .venv/bin/python tools/make_unicode_tables.py     # about 15 s; then review the diff

`tokenizers` (Rust) does not use Python's `unicodedata`: BertNormalizer and BertPreTokenizer read the
`unicode_categories` crate (control, nonspacing mark and punctuation), `unicode-normalization-alignments`
(NFD) and Rust's standard library (whitespace, lower-case), each compiled from its own Unicode version.
Rather than guess those tables, this script runs every one of the 1,112,064 Unicode scalar values
through the package's own normalizers and pre-tokenizer and writes down what it sees, as ranges. It
then names each table's Unicode version from the newest characters the table knows (SENTINELS below:
characters whose Unicode version is known) and checks that Python's NFD agrees with Rust's on every
character outside NFD_OPAQUE. Run it again when the pinned `tokenizers` changes, and let
tests/test_wordpiece.py::test_unicode_tables confirm the result on every code point.
"""

from __future__ import annotations

import sys
import unicodedata
from itertools import groupby, pairwise
from pathlib import Path

import tokenizers
from tokenizers import normalizers, pre_tokenizers

OUT = Path(__file__).resolve().parents[1] / "minift" / "tokenizer" / "unicode_tables.py"
SCALARS = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]  # surrogates cannot be UTF-8 encoded

# Characters whose Unicode version is known (the Unicode Character Database's DerivedAge.txt): a table
# that knows the newest of a row and none of the next row is of that row's version.
SENTINELS = {
    "categories": [("7.0.0", [0x2E3C, 0x1DF5]), ("8.0.0", [0x2E42, 0x08E3]), ("9.0.0", [0x2E43, 0x08D4]),
                   ("10.0.0", [0x2E45, 0x1DF6])],
    "normalization": [("8.0.0", [0x08E3]), ("9.0.0", [0x08D4, 0x1DFB]), ("10.0.0", [0x1DF6, 0x09FE]),
                      ("11.0.0", [0x07FD])],
    "case": [("15.0.0", [0x1E030]), ("16.0.0", [0x1C89, 0x10D50]), ("17.0.0", [0x16EA0]), ("18.0.0", [])],
}


def probe() -> dict:
    """Every scalar value through each step of the reference, one call per character and step."""
    clean = normalizers.BertNormalizer(True, False, False, False).normalize_str
    strip = normalizers.BertNormalizer(False, False, True, False).normalize_str
    lower = normalizers.BertNormalizer(False, False, False, True).normalize_str
    nfd = normalizers.NFD().normalize_str
    split = pre_tokenizers.BertPreTokenizer().pre_tokenize_str
    tables = {"control": [], "whitespace": [], "punctuation": [], "mark": [], "lower": {}, "nfd_differs": []}
    for code in SCALARS:
        ch = chr(code)
        cleaned = clean(ch)
        if cleaned == "" and ch not in "\x00\ufffd":  # NUL and U+FFFD are removed by name, not as controls
            tables["control"].append(code)
        words = [w for w, _ in split(f"a{ch}a")]
        if words == ["a", "a"]:
            tables["whitespace"].append(code)
        elif words == ["a", ch, "a"]:
            tables["punctuation"].append(code)
        else:
            assert words == [f"a{ch}a"], (hex(code), words)
        decomposed = nfd(ch)
        if decomposed == ch and strip(ch) == "":  # a character NFD keeps, then dropped: a nonspacing mark
            tables["mark"].append(code)
        if lower(ch) != ch:
            tables["lower"][code] = lower(ch)
        if _python_nfd_differs(ch, nfd):
            tables["nfd_differs"].append(code)
    return tables


# Combining marks of known canonical combining class (ccc): 1, 10, 103, 220, 230, 240. A character
# with a nonzero ccc in one library and another (or zero) in the other is reordered differently
# next to one of them.
PROBE_MARKS = "\u0334\u05b0\u0e38\u0316\u0301\u0345"


def _python_nfd_differs(ch: str, nfd) -> bool:
    """Does Python's NFD treat ``ch`` differently from Rust's (its decomposition or its ccc)?"""
    if nfd(ch) != unicodedata.normalize("NFD", ch):
        return True
    return any(nfd(s) != unicodedata.normalize("NFD", s) for m in PROBE_MARKS for s in (ch + m, m + ch))


def _rust_keeps(ch: str, nfd) -> bool:
    """Rust's NFD leaves ``ch`` as it is and never moves a mark across it (a starter, ccc 0)."""
    return nfd(ch) == ch and all(nfd(s) == s for m in PROBE_MARKS for s in (ch + m, m + ch))


def version(name: str, known) -> str:
    """The newest SENTINELS row whose characters the table knows, checking it knows none of the next."""
    rows = SENTINELS[name]
    found = None
    for (v, codes), (_, newer) in pairwise(rows):
        if all(known(c) for c in codes) and not any(known(c) for c in newer):
            found = v
    if found is None:
        sys.exit(f"cannot name the Unicode version of the {name} tables: extend SENTINELS")
    return found


def ranges(codes) -> list[tuple[int, int]]:
    """Sorted code points -> inclusive (first, last) runs."""
    out = []
    for _, run in groupby(enumerate(sorted(codes)), key=lambda t: t[1] - t[0]):
        run = [c for _, c in run]
        out.append((run[0], run[-1]))
    return out


def case_runs(mapping: dict[int, str]) -> tuple[list[tuple[int, int, int, int]], dict[int, str]]:
    """{code: lower} -> (first, last, step, delta) runs where every step-th code in [first, last] maps to
    code + delta (A-Z: step 1; the alternating Latin Extended pairs: step 2), and the multi-character rest."""
    single = {c: ord(lo) for c, lo in mapping.items() if len(lo) == 1}
    multi = {c: lo for c, lo in mapping.items() if len(lo) > 1}
    runs, codes, i = [], sorted(single), 0
    while i < len(codes):
        first, delta = codes[i], single[codes[i]] - codes[i]
        step = 2 if i + 1 < len(codes) and codes[i + 1] == first + 2 and single[codes[i + 1]] - codes[i + 1] == delta \
            else 1
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + step and single[codes[j + 1]] - codes[j + 1] == delta:
            j += 1
        runs.append((first, codes[j], step, delta))
        i = j + 1
    return runs, multi


def fmt_ranges(name: str, rs, per_line: int = 6) -> str:
    items = [f"(0x{a:04X}, 0x{b:04X})" for a, b in rs]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return f"{name} = (\n" + "".join(f"    {line},\n" for line in lines) + ")\n"


def main() -> None:
    t = probe()
    nfd = normalizers.NFD().normalize_str
    # What NFD_OPAQUE must hold: every character Python might decompose or reorder differently from
    # Rust. Those found now, and every code point unassigned in this Python's Unicode (a later Python
    # may assign it a decomposition or a ccc that Rust's older tables do not have). Rust keeps each of
    # them as a plain starter, so NFD can be applied to the text between them.
    unassigned = [c for c in SCALARS if unicodedata.category(chr(c)) == "Cn"]
    opaque = sorted(set(t["nfd_differs"]) | set(unassigned))
    bad = [hex(c) for c in t["nfd_differs"] if not _rust_keeps(chr(c), nfd)]
    if bad:
        sys.exit(f"Rust's NFD changes these characters where Python's differs; extend the method: {bad}")
    punctuation, marks, control = set(t["punctuation"]), set(t["mark"]), set(t["control"])
    versions = {
        "categories": version("categories", lambda c: c in punctuation or c in marks or c in control),
        "normalization": version("normalization", lambda c: not _rust_keeps(chr(c), nfd)),
        "case": version("case", lambda c: c in t["lower"] or chr(c) in t["lower"].values()),
    }
    runs, multi = case_runs(t["lower"])
    ws = [f"0x{c:04X}" for c in t["whitespace"]]
    whitespace = "".join(f"    {', '.join(ws[i:i + 10])},\n" for i in range(0, len(ws), 10))
    lower_runs = "".join(f"    (0x{a:04X}, 0x{b:04X}, {s}, {d}),\n" for a, b, s, d in runs)
    special = ", ".join(f"0x{c:04X}: {lo!r}" for c, lo in multi.items())
    tables = "\n".join([fmt_ranges("CONTROL", ranges(control)), fmt_ranges("NONSPACING_MARK", ranges(marks)),
                        fmt_ranges("PUNCTUATION", ranges(punctuation)), fmt_ranges("NFD_OPAQUE", ranges(opaque), 4)])
    text = f'''"""Generated by tools/make_unicode_tables.py from tokenizers {tokenizers.__version__}; do not edit by hand.

The character classes of the `tokenizers` package's BertNormalizer and BertPreTokenizer, read off the
package itself on every Unicode scalar value (lesson 01, "Where Python and Rust disagree"):

- CONTROL, NONSPACING_MARK, PUNCTUATION: the `unicode_categories` crate, Unicode {versions["categories"]}
  (control: categories Cc, Cf, Co, except tab and the newlines; nonspacing mark: Mn; punctuation: P*
  and the rest of non-alphanumeric ASCII);
- NFD_OPAQUE: the code points where `unicode-normalization-alignments` (Unicode {versions["normalization"]})
  and Python's `unicodedata` ({unicodedata.unidata_version}) could decompose or reorder differently:
  those where they do, and every code point unassigned in Unicode {unicodedata.unidata_version}. Rust
  keeps each of them as it is;
- WHITESPACE, LOWERCASE_RUNS and LOWERCASE_SPECIAL: Rust's standard library (`char::is_whitespace`,
  `char::to_lowercase`), Unicode {versions["case"]}.

Ranges are inclusive (first, last) code points. A lower-case run (first, last, step, delta) maps every
step-th code point from first to last to code point + delta.

Long because it is generated data: one table of ranges per character class, NFD_OPAQUE alone about
300 lines.
"""

TOKENIZERS_VERSION = "{tokenizers.__version__}"
UNICODE_VERSIONS = {versions!r}

WHITESPACE = (
{whitespace})

{tables}
LOWERCASE_RUNS = (
{lower_runs})
LOWERCASE_SPECIAL = {{{special}}}
'''
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}: {versions}; {len(control)} control, {len(marks)} marks, {len(punctuation)} punctuation, "
          f"{len(t['whitespace'])} whitespace, {len(t['lower'])} lower-case mappings ({len(runs)} runs), "
          f"{len(opaque)} NFD-opaque code points ({len(t['nfd_differs'])} where Python's NFD differs today)")


if __name__ == "__main__":
    main()
