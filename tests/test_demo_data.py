"""Checks on the built-in demo sentiment set, minift/data/demo/{train,dev}.tsv.

`make demo` fine-tunes all-MiniLM-L6-v2 on these files, and they ship inside the wheel, so
they must be well-formed for any TSV reader and must make a fair little benchmark:
both labels in similar numbers, no review seen twice (a duplicate across the split would
leak dev answers into training), no template with one noun swapped, and no keyword that
gives the answer away. The folder's README.md says where the text comes from.
"""

import csv
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_PACKAGE = REPO / "minift" / "data"  # the package "minift.data" named in pyproject.toml
DEMO = DATA_PACKAGE / "demo"
SPLITS = {"train": 1040, "dev": 260}  # split name -> minimum number of reviews
LABELS = {"positive", "negative"}
MAX_CHARS = 300


def read_split(name: str) -> list[tuple[str, str]]:
    """Parse one split strictly; on a malformed line fail with the file and line number."""
    path = DEMO / f"{name}.tsv"
    raw = path.read_bytes()
    # Strict decode: a stray Latin-1 byte must fail here, naming the file, not later in the tokenizer.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        pytest.fail(f"{path}: not valid UTF-8 at byte {err.start}")
    assert not text.startswith("\ufeff"), f"{path}: starts with a byte-order mark"
    assert "\r" not in text, f"{path}: has CR characters; use LF line endings"
    assert text.endswith("\n"), f"{path}: last line has no newline"
    lines = text[:-1].split("\n")
    assert lines[0] == "text\tlabel", f"{path}:1: header is {lines[0]!r}, expected 'text<TAB>label'"
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        assert len(fields) == 2, f"{path}:{lineno}: {len(fields)} tab-separated fields, expected 2"
        review, label = fields
        assert review, f"{path}:{lineno}: empty review"
        assert review == review.strip(), f"{path}:{lineno}: leading or trailing whitespace"
        # A double quote would make csv/pandas readers (quotechar '"') parse the line differently.
        assert '"' not in review, f"{path}:{lineno}: contains a double quote"
        assert len(review) <= MAX_CHARS, f"{path}:{lineno}: {len(review)} characters > {MAX_CHARS}"
        assert label in LABELS, f"{path}:{lineno}: label {label!r} not in {sorted(LABELS)}"
        rows.append((review, label))
    return rows


def normalise(review: str) -> str:
    """Key for duplicate detection: case-folded, runs of whitespace collapsed."""
    return " ".join(review.casefold().split())


@pytest.fixture(scope="module")
def splits() -> dict[str, list[tuple[str, str]]]:
    return {name: read_split(name) for name in SPLITS}


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_split_size_and_labels(splits, name):
    rows = splits[name]
    assert len(rows) >= SPLITS[name], f"{name}.tsv has {len(rows)} reviews, expected >= {SPLITS[name]}"
    counts = Counter(label for _, label in rows)
    share = counts["positive"] / len(rows)
    assert 0.45 <= share <= 0.55, f"{name}.tsv is {share:.1%} positive ({dict(counts)}), expected 45-55%"


def test_train_dev_ratio(splits):
    share = len(splits["dev"]) / (len(splits["train"]) + len(splits["dev"]))
    assert 0.15 <= share <= 0.25, f"dev holds {share:.1%} of all reviews, expected about 20%"


def test_no_duplicates_within_or_across_splits(splits):
    first_seen: dict[str, str] = {}
    for name, rows in splits.items():
        for lineno, (review, _) in enumerate(rows, start=2):
            key = normalise(review)
            where = f"{name}.tsv:{lineno}"
            assert key not in first_seen, f"{where} duplicates {first_seen[key]}: {review!r}"
            first_seen[key] = where


def test_no_near_duplicates(splits):
    """Two reviews sharing most of their words are a template with a noun swapped, not two reviews.

    Jaccard similarity of the word sets; 0.6 is above every pair of genuinely different
    reviews in the set (the highest is 0.44) but below a one-word substitution in a
    ten-word sentence (9/11 = 0.82).
    """
    items = [
        (f"{name}.tsv:{lineno}", review)
        for name, rows in splits.items()
        for lineno, (review, _) in enumerate(rows, start=2)
    ]
    words = [frozenset(re.findall(r"[a-z0-9']+", review.casefold())) for _, review in items]
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            a, b = words[i], words[j]
            similarity = len(a & b) / len(a | b)
            assert similarity < 0.6, f"{items[i][0]} and {items[j][0]} share {similarity:.0%} of their words"


def test_not_solvable_by_one_keyword(splits):
    """The demo must show fine-tuning helping, so no single-word rule may come close to solving it.

    For every word w seen in train, the rule "positive iff w occurs" (or its negation) is fitted
    on train and the best one is scored on dev. Here the best rule ("and") scores 50% on dev,
    the majority-class rate, because "not", "good" and "great" appear on both sides; 60% would
    mean the set has drifted towards being a keyword-spotting task.
    """

    def words(review: str) -> set[str]:
        return set(re.findall(r"[a-z']+", review.casefold()))

    def fit(rows) -> tuple[str, bool]:
        with_word = {True: Counter(), False: Counter()}  # label is positive -> word -> #reviews
        for review, label in rows:
            with_word[label == "positive"].update(words(review))
        n_neg = sum(label == "negative" for _, label in rows)

        def train_accuracy(word: str, polarity: bool) -> float:
            hits = with_word[True][word] + n_neg - with_word[False][word]  # "positive iff word"
            return (hits if polarity else len(rows) - hits) / len(rows)

        vocab = with_word[True].keys() | with_word[False].keys()
        return max(((w, p) for w in vocab for p in (True, False)), key=lambda wp: train_accuracy(*wp))

    word, polarity = fit(splits["train"])
    dev = splits["dev"]
    correct = sum(((word in words(review)) == polarity) == (label == "positive") for review, label in dev)
    assert correct / len(dev) < 0.60, f"the one-word rule on {word!r} scores {correct / len(dev):.1%} on dev"


def test_every_review_parses_the_same_with_csv_module(splits):
    """Readers built on the csv module (the --train FILE path, pandas) must see exactly our rows."""
    for name, rows in splits.items():
        with open(DEMO / f"{name}.tsv", encoding="utf-8", newline="") as handle:
            parsed = [tuple(row) for row in csv.reader(handle, delimiter="\t")]
        assert parsed[0] == ("text", "label")
        assert parsed[1:] == rows, f"csv.reader reads {name}.tsv differently from a plain split"


def test_files_are_package_data():
    """The wheel ships what pyproject.toml's package-data glob finds under minift/data/."""
    found = sorted(p.name for p in DATA_PACKAGE.glob("demo/*.tsv"))
    assert found == ["dev.tsv", "train.tsv"], f"demo/*.tsv under {DATA_PACKAGE} finds {found}"
    assert (DATA_PACKAGE / "__init__.py").is_file(), f"{DATA_PACKAGE} is not a package"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is in the standard library from 3.11")
def test_pyproject_declares_the_glob():
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"].get("minift.data", [])
    assert "demo/*.tsv" in patterns, f"pyproject.toml package-data for minift.data is {patterns}"
