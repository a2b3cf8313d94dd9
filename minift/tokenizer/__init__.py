"""Tokenizers: text -> token ids -> text (lessons/01-wordpiece.md and lessons/14-byte-level-bpe.md).

- `WordPieceTokenizer` (minift/tokenizer/wordpiece.py): BERT's tokenizer, written out by hand;
- `ByteLevelBPETokenizer` (minift/tokenizer/bpe.py): GPT-2's, written out by hand;
- `RobertaTokenizer` (minift/tokenizer/roberta.py): GPT-2's with RoBERTa's `<s> … </s>` (lesson 34);
- `FastTokenizer` (minift/tokenizer/fast.py): the same interface over the Rust `tokenizers` package;
- `BatchEncoding` (minift/tokenizer/base.py): what a batch call returns;
- minift/tokenizer/files.py: the file names of a tokenizer folder and the settings read from them;
- `load_tokenizer(folder, fast=False)`: the right one of them for a checkpoint folder;
- transformers' names, `BertTokenizer`, `BertTokenizerFast`, `GPT2Tokenizer`, `GPT2TokenizerFast` and
  `AutoTokenizer` (minift/tokenizer/compat.py): the same tokenizers with transformers' call forms and
  defaults, for programs written for transformers (lesson 33).
"""

from __future__ import annotations

from pathlib import Path

from minift.io import read_json
from minift.tokenizer.base import BatchEncoding
from minift.tokenizer.fast import FastTokenizer
from minift.tokenizer.files import MERGES_TXT, TOKENIZER_JSON, VOCAB_JSON, VOCAB_TXT, is_roberta_folder
from minift.tokenizer.wordpiece import WordPieceTokenizer

COMPAT = ("AutoTokenizer", "BertTokenizer", "BertTokenizerFast", "GPT2Tokenizer", "GPT2TokenizerFast")
__all__ = ["AutoTokenizer", "BatchEncoding", "BertTokenizer", "BertTokenizerFast", "ByteLevelBPETokenizer",
           "FastTokenizer", "GPT2Tokenizer", "GPT2TokenizerFast", "RobertaTokenizer", "WordPieceTokenizer",
           "check_vocab_size",
           "load_tokenizer"]


def __getattr__(name: str):
    # bpe.py (and compat.py, which uses it) are imported on first use only, so the BERT tokenizers do
    # not depend on them.
    if name == "ByteLevelBPETokenizer":
        from minift.tokenizer.bpe import ByteLevelBPETokenizer

        return ByteLevelBPETokenizer
    if name == "RobertaTokenizer":
        from minift.tokenizer.roberta import RobertaTokenizer

        return RobertaTokenizer
    if name in COMPAT:
        from minift.tokenizer import compat

        return getattr(compat, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_tokenizer(folder: str | Path, fast: bool = False):
    """The tokenizer of a checkpoint folder: RoBERTa's when its config.json (or tokenizer_config.json)
    says RoBERTa, else GPT-2's byte-level BPE when it holds vocab.json and merges.txt, BERT's
    WordPiece when it holds vocab.txt or a WordPiece tokenizer.json;
    ``fast=True`` gives a `FastTokenizer` over the `tokenizers` package for either."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
    if fast:
        return FastTokenizer.from_pretrained(folder)
    if is_roberta_folder(folder):
        from minift.tokenizer.roberta import RobertaTokenizer

        return RobertaTokenizer.from_pretrained(folder)
    if (folder / VOCAB_JSON).is_file() and (folder / MERGES_TXT).is_file():
        from minift.tokenizer.bpe import ByteLevelBPETokenizer

        return ByteLevelBPETokenizer.from_pretrained(folder)
    if (folder / VOCAB_TXT).is_file():
        return WordPieceTokenizer.from_pretrained(folder)
    if (folder / TOKENIZER_JSON).is_file():
        data = read_json(folder / TOKENIZER_JSON)
        model_type = data.get("model", {}).get("type") if isinstance(data, dict) else None
        if model_type == "WordPiece":
            return WordPieceTokenizer.from_pretrained(folder)
        raise ValueError(f"{folder / TOKENIZER_JSON}: a {model_type!r} model has no hand-written "
                         f"tokenizer in minift; load it with load_tokenizer(folder, fast=True)")
    raise FileNotFoundError(f"{folder} holds no tokenizer files (vocab.txt, vocab.json + merges.txt or "
                            f"tokenizer.json)")


def check_vocab_size(tokenizer, vocab_size: int, folder: str | Path) -> None:
    """A token id is a row of the model's embedding matrix, so the tokenizer and the model must count
    the same tokens: a 500-line vocab.txt beside a model of 30,522 embeddings would give ids that mean
    other words to the model (and a longer one, ids past the last row)."""
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding has "
                         f"{vocab_size} rows (vocab_size in config.json): the tokenizer files and the weights "
                         "are not of the same checkpoint")
