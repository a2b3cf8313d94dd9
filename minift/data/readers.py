"""Dataset readers: labelled text files in, a list of `Example`s out (lesson 10, lessons/10-data.md).

Formats, chosen by the file extension:

- ``.tsv`` / ``.csv``: a header row naming the columns ``text`` and ``label`` (and optionally
  ``text_pair``); other columns are ignored. TSV is split on tabs (no quoting); CSV goes through the
  ``csv`` module so quoted fields may hold commas, quotes and newlines.
- ``.jsonl``: one JSON object per line with ``"text"`` and ``"label"`` (optionally ``"text_pair"``).
- ``.txt``: the minBERT format, one ``label ||| text`` per line (e.g. SST-5 and CFIMDB).

CoNLL files for token classification (``token<TAB>tag``, a blank line between sentences) are read
by `read_conll`. Labels stay strings; `LabelMap` turns them into the ids a model predicts and back.

Every malformed line is a `DataError` that starts with ``file:line:`` (1-based), the form editors
and terminals turn into a link, so a bad row in a 100k-line file is found in one click.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

FORMATS = (".tsv", ".csv", ".jsonl", ".txt")
DEMO_SPLITS = ("train", "dev")


class DataError(ValueError):
    """A data file (or a label in it) that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One labelled text (or text pair); ``source`` is ``"file:line"`` for error messages."""

    text: str
    label: str
    text_pair: str | None = None
    source: str = ""


# --- classification files -------------------------------------------------------------------------


def read_classification(path: str | Path) -> list[Example]:
    """All examples of a ``.tsv``, ``.csv``, ``.jsonl`` or minBERT ``.txt`` file, in file order."""
    path = Path(path)
    readers = {".tsv": _read_tsv, ".csv": _read_csv, ".jsonl": _read_jsonl, ".txt": _read_minbert}
    suffix = path.suffix.lower()
    if suffix not in readers:
        raise DataError(f"{path}: unknown data format {path.suffix or '(no extension)'!r}; "
                        f"accepted: {', '.join(FORMATS)}")
    examples = readers[suffix](path, _read_text(path))
    if not examples:
        raise DataError(f"{path}: no examples found (the file is empty or holds only blank lines)")
    return examples


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a leading byte-order mark, as Excel writes it, is dropped)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start})") from None


def _lines(text: str) -> Iterable[tuple[int, str]]:
    """(1-based line number, line) without the line ending. Splits on \\n only: str.splitlines would
    also split on form feeds and Unicode separators inside a text and shift every line number."""
    for number, line in enumerate(text.split("\n"), 1):
        yield number, line.removesuffix("\r")


def _json_lines(path: Path, text: str) -> Iterable[tuple[int, object]]:
    """(1-based line number, parsed value) of each non-blank line of a JSONL text; a line that is not
    JSON is a DataError naming the file and the line. Every JSONL reader of minift/data/ reads this way."""
    for number, line in _lines(text):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: bad JSON ({err.msg} at column {err.colno})") from None
        yield number, record


def _example(path: Path, line: int, text: object, label: object, text_pair: object = None,
             has_pair: bool = False) -> Example:
    """Validates one record's fields; the error names ``path:line``."""
    where = f"{path}:{line}"
    label = _label_string(label, where)
    text = _text_string(text, "text", where)
    text_pair = _text_string(text_pair, "text_pair", where) if has_pair else None
    return Example(text, label, text_pair, where)


def _text_string(text: object, column: str, where: str) -> str:
    if not isinstance(text, str):
        raise DataError(f"{where}: {column} must be a string, found {type(text).__name__}")
    if not text.strip():
        raise DataError(f"{where}: empty {column}")
    return text.strip()


def _label_string(label: object, where: str) -> str:
    # JSON may write a class id as a number; it becomes the same string a TSV file would hold.
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)
    if not isinstance(label, str):
        raise DataError(f"{where}: label must be a string or an integer, found {type(label).__name__}")
    if not label.strip():
        raise DataError(f"{where}: missing label")
    return label.strip()


def _columns(path: Path, line: int, names: list[str]) -> dict[str, int]:
    """Column name -> index, checking that ``text`` and ``label`` are there."""
    missing = [name for name in ("text", "label") if name not in names]
    if missing:
        raise DataError(f"{path}:{line}: header row {names} has no column {' or '.join(map(repr, missing))} "
                        f"(a header naming the columns 'text' and 'label' is required)")
    duplicated = sorted({name for name in names if names.count(name) > 1 and name})
    if duplicated:
        raise DataError(f"{path}:{line}: header row names column(s) {duplicated} more than once")
    return {name: i for i, name in enumerate(names)}


def _from_row(path: Path, line: int, row: list[str], header: list[str], columns: dict[str, int],
              separator: str) -> Example:
    if len(row) != len(header):
        raise DataError(f"{path}:{line}: expected {len(header)} {separator}-separated columns as in the "
                        f"header {header}, found {len(row)}")
    pair = columns.get("text_pair")
    return _example(path, line, row[columns["text"]], row[columns["label"]],
                    row[pair] if pair is not None else None, has_pair=pair is not None)


def _read_tsv(path: Path, text: str) -> list[Example]:
    rows = [(number, line) for number, line in _lines(text) if line.strip()]
    if not rows:
        return []
    header_line, first = rows[0]
    header = [name.strip() for name in first.split("\t")]
    columns = _columns(path, header_line, header)
    return [_from_row(path, number, line.split("\t"), header, columns, "tab") for number, line in rows[1:]]


def _read_csv(path: Path, text: str) -> list[Example]:
    # strict=True turns an unclosed quote into an error instead of swallowing the rest of the file.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    examples, header, columns, line = [], None, None, 1
    try:
        for row in reader:
            if row and any(field.strip() for field in row):
                if header is None:
                    header = [name.strip() for name in row]
                    columns = _columns(path, line, header)
                else:
                    examples.append(_from_row(path, line, row, header, columns, "comma"))
            line = reader.line_num + 1  # a quoted field may span lines: the next record starts here
    except csv.Error as err:
        raise DataError(f"{path}:{line}: malformed CSV ({err})") from None
    return examples


def _read_jsonl(path: Path, text: str) -> list[Example]:
    examples = []
    for number, record in _json_lines(path, text):
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object with 'text' and 'label', "
                            f"found {type(record).__name__}")
        missing = [key for key in ("text", "label") if key not in record]
        if missing:
            raise DataError(f"{path}:{number}: JSON object has no {' or '.join(map(repr, missing))} key")
        examples.append(_example(path, number, record["text"], record["label"], record.get("text_pair"),
                                 has_pair="text_pair" in record))
    return examples


def _read_minbert(path: Path, text: str) -> list[Example]:
    examples = []
    for number, line in _lines(text):
        if not line.strip():
            continue
        label, separator, sentence = line.partition("|||")
        if not separator:
            raise DataError(f"{path}:{number}: expected 'label ||| text', found no '|||'")
        examples.append(_example(path, number, sentence, label))
    return examples


# --- CoNLL (token classification) -----------------------------------------------------------------


def read_conll(path: str | Path) -> list[tuple[list[str], list[str]]]:
    """Sentences of a CoNLL file as (tokens, tags) pairs.

    One token per line, ``token<TAB>tag`` (or space-separated); a blank line ends a sentence and
    ``-DOCSTART-`` lines are skipped. With more than two columns (CoNLL-2003 keeps POS and chunk
    tags between) the token is the first column and the tag the last; every line must have the same
    number of columns, which catches a token that itself contains a space.
    """
    path = Path(path)
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    width = None  # number of columns, fixed by the first token line
    for number, line in _lines(_read_text(path)):
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if fields[0].strip() == "-DOCSTART-":
            continue
        if len(fields) < 2 or not fields[0].strip() or not fields[-1].strip():
            raise DataError(f"{path}:{number}: expected 'token<TAB>tag', found {line!r}")
        if width is None:
            width = len(fields)
        if len(fields) != width:
            raise DataError(f"{path}:{number}: expected {width} columns as on the first token line, "
                            f"found {len(fields)} in {line!r}")
        tokens.append(fields[0])
        tags.append(fields[-1].strip())
    if tokens:
        sentences.append((tokens, tags))
    if not sentences:
        raise DataError(f"{path}: no sentences found (the file is empty or holds only blank lines)")
    return sentences


# --- labels <-> ids -------------------------------------------------------------------------------


def _label_order(label: str) -> tuple:
    """Sort key: integer labels first, by value ("2" < "10"), then the others alphabetically."""
    try:
        return (0, int(label), label)
    except ValueError:
        return (1, 0, label)


class LabelMap:
    """The fixed mapping between label strings and the class ids a model predicts.

    The ids index the rows of the classifier head, so the mapping is part of the model: it is saved
    in ``config.json`` (``id2label`` / ``label2id``) and read back with `from_config`.
    """

    def __init__(self, names: Iterable[str]):
        names = list(names)
        if not names:
            raise DataError("a label map needs at least one label")
        if not all(isinstance(name, str) for name in names):
            raise DataError(f"labels must be strings, found {sorted({type(n).__name__ for n in names})}")
        if len(set(names)) != len(names):
            raise DataError(f"duplicate labels in {names}")
        self.names = names
        self.label2id = {name: i for i, name in enumerate(names)}
        self.id2label = dict(enumerate(names))

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> LabelMap:
        """The distinct training labels, numeric ones in numeric order, the rest alphabetically."""
        return cls(sorted(set(labels), key=_label_order))

    @classmethod
    def from_config(cls, id2label: Mapping[int | str, str]) -> LabelMap:
        """From a ``config.json`` ``id2label`` (JSON makes the ids strings: ``{"0": "negative"}``)."""
        try:
            by_id = {int(i): name for i, name in id2label.items()}
        except (TypeError, ValueError):
            raise DataError(f"id2label keys must be class ids 0..n-1, found {list(id2label)}") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise DataError(f"id2label keys must be the class ids 0..{len(by_id) - 1}, found {sorted(by_id)}")
        return cls(by_id[i] for i in range(len(by_id)))

    def encode(self, label: str, source: str = "") -> int:
        """The id of ``label``; an unknown label names where it came from and the known ones."""
        if label not in self.label2id:
            where = f"{source}: " if source else ""
            raise DataError(f"{where}label {label!r} is not one of the {len(self)} labels the model "
                            f"knows: {self.names}")
        return self.label2id[label]

    def check(self, examples: Iterable[Example]) -> None:
        """Fails on the first example (e.g. of a dev set) whose label was not seen in training."""
        for example in examples:
            self.encode(example.label, example.source)

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and self.names == other.names

    def __repr__(self) -> str:
        return f"LabelMap({self.names})"


# --- the packaged demo set ------------------------------------------------------------------------


def demo_path(split: str) -> Path:
    """The built-in sentiment set (TSV, labels negative/positive) shipped inside the package."""
    if split not in DEMO_SPLITS:
        raise ValueError(f"unknown demo split {split!r}; available: {', '.join(DEMO_SPLITS)}")
    path = Path(__file__).parent / "demo" / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"demo data file {path} is missing; reinstall minift (`pip install -e .`)")
    return path
