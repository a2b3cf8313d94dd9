"""Sequence-to-sequence data: (source, target) text pairs in, padded encoder/decoder batches out
(`minift finetune --task seq2seq`, lessons/39-the-transformer.md).

Formats, chosen by the file extension:

- ``.tsv``: a header row naming the columns ``source`` and ``target`` (other columns are ignored),
  split on tabs (no quoting);
- ``.jsonl``: one JSON object per line with the keys ``"source"`` and ``"target"``.

Every malformed line is a `DataError` starting with ``file:line:``, as the other readers' (readers.py).

A batch holds what the seq2seq `forward` reads: ``input_ids`` / ``attention_mask`` (the source, with
the tokenizer's template), ``labels`` (the target's tokens then end-of-sequence, -100 where padded)
and ``decoder_input_ids`` (the labels shifted right after ``decoder_start_token_id``: teacher
forcing, Vaswani et al. 2017, sec. 3.1, "the output embeddings are offset by one position").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from minift.data.readers import DataError, _json_lines, _lines, _read_text
from minift.generation.seq2seq import shift_tokens_right
from minift.losses import IGNORE_INDEX

PAIR_FORMATS = (".tsv", ".jsonl")
COLUMNS = ("source", "target")


@dataclass(frozen=True)
class Pair:
    """One source text and its target; ``where`` is ``"file:line"`` for error messages."""

    source: str
    target: str
    where: str = ""


def read_pairs(path: str | Path) -> list[Pair]:
    """All pairs of a ``.tsv`` (columns source, target) or ``.jsonl`` (keys source, target) file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PAIR_FORMATS:
        raise DataError(f"{path}: unknown format {path.suffix or '(no extension)'!r} for source/target pairs; "
                        f"accepted: {', '.join(PAIR_FORMATS)}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    text = _read_text(path)
    pairs = _read_tsv(path, text) if suffix == ".tsv" else _read_jsonl(path, text)
    if not pairs:
        raise DataError(f"{path}: no source/target pairs found (the file is empty or holds only a header)")
    return pairs


def _pair(where: str, source: object, target: object) -> Pair:
    for name, value in (("source", source), ("target", target)):
        if not isinstance(value, str):
            raise DataError(f"{where}: {name} must be a string, found {type(value).__name__}")
        if not value.strip():
            raise DataError(f"{where}: empty {name}")
    return Pair(source.strip(), target.strip(), where)


def _read_tsv(path: Path, text: str) -> list[Pair]:
    pairs, columns = [], None
    for number, line in _lines(text):
        if not line.strip():
            continue
        cells = line.split("\t")
        if columns is None:
            names = [c.strip() for c in cells]
            missing = [c for c in COLUMNS if c not in names]
            if missing:
                raise DataError(f"{path}:{number}: header row {names} has no column "
                                f"{' or '.join(map(repr, missing))} (a header naming 'source' and 'target' is required)")
            columns = {name: names.index(name) for name in COLUMNS}
            width = len(names)
            continue
        if len(cells) != width:
            raise DataError(f"{path}:{number}: {len(cells)} tab-separated fields, the header has {width}")
        pairs.append(_pair(f"{path}:{number}", cells[columns["source"]], cells[columns["target"]]))
    return pairs


def _read_jsonl(path: Path, text: str) -> list[Pair]:
    pairs = []
    for number, record in _json_lines(path, text):
        where = f"{path}:{number}"
        if not isinstance(record, dict) or any(key not in record for key in COLUMNS):
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{where}: expected an object with keys 'source' and 'target', found {found}")
        pairs.append(_pair(where, record["source"], record["target"]))
    return pairs


@dataclass(frozen=True)
class EncodedPair:
    """A pair as token ids: the source with its template, the target's tokens + end-of-sequence."""

    source_ids: list[int]
    target_ids: list[int]
    where: str = ""


def encode_pairs(tokenizer, pairs: Sequence[Pair], *, eos_token_id: int, max_length: int,
                 limit_name: str = "--max-length") -> list[EncodedPair]:
    """Token ids of every pair. A source or target longer than ``max_length`` tokens is an error
    naming the file and line: cutting a target would teach the model to stop mid-sentence, a silent
    wrong answer; `limit_name` says which number to raise."""
    encoded = []
    for pair in pairs:
        source = tokenizer.encode(pair.source, truncation=False)
        target = tokenizer.encode(pair.target, add_special_tokens=False, truncation=False) + [eos_token_id]
        for name, ids in (("source", source), ("target", target)):
            if len(ids) > max_length:
                raise DataError(f"{pair.where}: the {name} is {len(ids)} tokens long (end-of-sequence included), "
                                f"longer than {limit_name}={max_length}; shorten it or raise {limit_name}")
        encoded.append(EncodedPair(source, target, pair.where))
    return encoded


class Seq2SeqCollate:
    """EncodedPairs -> {input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, labels},
    each padded to the batch's longest (right padding)."""

    def __init__(self, pad_token_id: int, decoder_start_token_id: int) -> None:
        self.pad_token_id, self.decoder_start_token_id = pad_token_id, decoder_start_token_id

    def __call__(self, examples: Sequence[EncodedPair]) -> dict[str, torch.Tensor]:
        source = _pad([e.source_ids for e in examples], self.pad_token_id)
        labels = _pad([e.target_ids for e in examples], IGNORE_INDEX)
        return {"input_ids": source, "attention_mask": (_pad([[1] * len(e.source_ids) for e in examples], 0)),
                "decoder_input_ids": shift_tokens_right(labels, self.pad_token_id, self.decoder_start_token_id),
                "decoder_attention_mask": _pad([[1] * len(e.target_ids) for e in examples], 0),
                "labels": labels}


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)
