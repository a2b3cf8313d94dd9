"""transformers' tokenizer names and call forms over minift's tokenizers, so that a program written
for transformers runs with only its imports changed.

Lesson: lessons/33-from-transformers.md.

    BertTokenizer       the hand-written WordPiece tokenizer (wordpiece.py)
    BertTokenizerFast   the same ids from the `tokenizers` package (fast.py)
    GPT2Tokenizer       the hand-written byte-level BPE tokenizer (bpe.py)
    GPT2TokenizerFast   the same ids from the `tokenizers` package (fast.py)
    AutoTokenizer       one of them, by the folder's tokenizer_config.json, else its files

They take transformers' defaults, which differ from minift's own classes: no padding and no
truncation unless asked for, lists unless `return_tensors="pt"`, and one string gives one sequence
(flat lists), a list gives a batch. `tokenizer(texts, padding=True, truncation=True,
return_tensors="pt")`, `tokenizer.encode(text, return_tensors="pt")`, `encode_plus`,
`batch_decode`, `decode(ids, skip_special_tokens=True)`, `is_split_into_words=True`,
`tokenizer.pad_token = tokenizer.eos_token`, `padding_side` and `model_max_length` work as there.
`return_offsets_mapping=True` needs the character offsets that the `tokenizers` package computes:
the Fast classes (and AutoTokenizer, fast by default as in transformers) have them; the hand-written
ones say so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from minift.io import read_json
from minift.tokenizer.base import BatchEncoding, _padding_mode
from minift.tokenizer.bpe import ByteLevelBPETokenizer
from minift.tokenizer.fast import FastTokenizer
from minift.tokenizer.files import MERGES_TXT, TOKENIZER_CONFIG, TOKENIZER_JSON, VOCAB_JSON, VOCAB_TXT
from minift.tokenizer.wordpiece import WordPieceTokenizer

# Settings transformers' from_pretrained takes that are applied after loading here.
LOAD_SETTINGS = ("padding_side", "model_max_length", "pad_token")
TRUNCATE = (True, "longest_first")
NO_TRUNCATION = (None, False, "do_not_truncate")
PAD_ERROR = ("Asking to pad but the tokenizer does not have a padding token. Please select a token to use as "
             "`pad_token` `(tokenizer.pad_token = tokenizer.eos_token e.g.)`")


def resolve_tokenizer_folder(name_or_folder: str | os.PathLike) -> Path:
    """A local folder as is; a name (e.g. "gpt2", "bert-base-uncased") through minift.hub."""
    path = Path(name_or_folder).expanduser()
    if path.exists() or isinstance(name_or_folder, os.PathLike) or path.is_absolute():
        return path
    from minift.hub import resolve  # imported here: the hub pulls in networking code

    return Path(resolve(str(name_or_folder)))


class TransformersTokenizer:
    """The transformers habits, mixed into a minift tokenizer class (see the module docstring)."""

    @classmethod
    def from_pretrained(cls, name_or_folder: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load a tokenizer folder (or a name, through minift.hub); padding_side=, pad_token= and
        model_max_length= are set afterwards, as transformers' keyword arguments."""
        settings = {k: kwargs.pop(k) for k in LOAD_SETTINGS if k in kwargs}
        kwargs.pop("use_fast", None)
        if kwargs or args:
            raise TypeError(f"{cls.__name__}.from_pretrained: minift does not implement "
                            f"{sorted(kwargs) or list(args)}; it takes {', '.join(LOAD_SETTINGS)}")
        tokenizer = super().from_pretrained(resolve_tokenizer_folder(name_or_folder))
        for key, value in settings.items():
            setattr(tokenizer, key, value)
        return tokenizer

    # ---- the special tokens by role, readable and settable ------------------------------------------
    def _get_role(self, role: str) -> str | None:
        return self.special_tokens_map.get(role)

    def _set_role(self, role: str, token: str | None) -> None:
        if token is None:
            self.special_tokens_map.pop(role, None)
            return
        if token not in self.vocab:
            raise ValueError(f"{role} {token!r} is not in the vocabulary ({len(self.vocab)} tokens); use a token "
                             f"it has, e.g. tokenizer.{role} = tokenizer.eos_token")
        self.special_tokens_map[role] = token

    pad_token = property(lambda self: self._get_role("pad_token"), lambda self, t: self._set_role("pad_token", t))
    eos_token = property(lambda self: self._get_role("eos_token"), lambda self, t: self._set_role("eos_token", t))
    bos_token = property(lambda self: self._get_role("bos_token"), lambda self, t: self._set_role("bos_token", t))
    unk_token = property(lambda self: self._get_role("unk_token"), lambda self, t: self._set_role("unk_token", t))
    cls_token = property(lambda self: self._get_role("cls_token"), lambda self, t: self._set_role("cls_token", t))
    sep_token = property(lambda self: self._get_role("sep_token"), lambda self, t: self._set_role("sep_token", t))
    mask_token = property(lambda self: self._get_role("mask_token"),
                          lambda self, t: self._set_role("mask_token", t))

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys(self.special_tokens_map.values()))

    @property
    def all_special_ids(self) -> list[int]:
        return [self.vocab[t] for t in self.all_special_tokens]

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    # ---- text -> ids ---------------------------------------------------------------------------------
    def __call__(self, text: Any = None, text_pair: Any = None, *, add_special_tokens: bool = True,
                 padding: bool | str = False, truncation: bool | str | None = None, max_length: int | None = None,
                 is_split_into_words: bool = False, return_tensors: str | None = None,
                 return_attention_mask: bool | None = None, return_token_type_ids: bool | None = None,
                 return_offsets_mapping: bool = False, padding_side: str | None = None,
                 **unsupported: Any) -> BatchEncoding:
        """transformers' call: one text (or pair) -> one sequence, a list -> a batch (a list of words
        with is_split_into_words=True is one sequence, a list of such lists a batch)."""
        if unsupported:
            raise TypeError(f"{type(self).__name__}(...): minift's tokenizers do not implement "
                            f"{sorted(unsupported)}")
        single = _is_single(text, is_split_into_words)
        texts = _as_batch(text, single, "text")
        pairs = None if text_pair is None else _as_batch(text_pair, single, "text_pair")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} text_pairs; they pair up one to one")
        if max_length is not None and padding is False and truncation is None:
            truncation = True  # transformers: max_length alone means "truncate to it"
        if truncation not in TRUNCATE + NO_TRUNCATION:
            raise ValueError(f"truncation={truncation!r}: minift truncates longest first (truncation=True) or "
                             "not at all (False); cut the texts yourself for other strategies")
        mode = "none" if padding in (False, "do_not_pad") else _padding_mode(padding)
        if mode != "none" and self.pad_token_id is None:
            raise ValueError(PAD_ERROR)
        if return_offsets_mapping and not isinstance(self, FastTokenizer):
            fast = {"BertTokenizer": "BertTokenizerFast", "GPT2Tokenizer": "GPT2TokenizerFast"}.get(
                type(self).__name__, "the Fast class")
            raise ValueError(f"return_offsets_mapping: {type(self).__name__} is minift's hand-written tokenizer, "
                             f"which keeps no character offsets; load {fast} (or AutoTokenizer, fast by default) "
                             "for them, as the same ids")
        encode = self._encode_words if is_split_into_words else self._encode_texts
        firsts = encode(texts)
        seconds = encode(pairs) if pairs is not None else [None] * len(texts)
        encodings = [self._finish(a, b, add_special_tokens, max_length, truncation in TRUNCATE)
                     for a, b in zip(firsts, seconds, strict=True)]
        side = self.padding_side
        self.padding_side = padding_side or side
        try:
            batch = self._pad(encodings, self._padded_length(encodings, mode, max_length), None,
                              offsets=return_offsets_mapping)
        finally:
            self.padding_side = side
        return _finish_batch(batch, single, return_tensors, return_attention_mask, return_token_type_ids)

    def encode(self, text: Any, text_pair: Any = None, add_special_tokens: bool = True, padding: bool | str = False,
               truncation: bool | str | None = None, max_length: int | None = None,
               return_tensors: str | None = None, **kwargs: Any) -> list[int] | torch.Tensor:
        """The ids of one text (or pair): a list, or a (1, T) tensor with return_tensors="pt"."""
        return self(text, text_pair, add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                    max_length=max_length, return_tensors=return_tensors, **kwargs)["input_ids"]

    def encode_plus(self, text: Any, text_pair: Any = None, **kwargs: Any) -> BatchEncoding:
        return self(text, text_pair, **kwargs)

    def batch_encode_plus(self, texts: Sequence, **kwargs: Any) -> BatchEncoding:
        return self(list(texts), **kwargs)

    # ---- ids -> text ----------------------------------------------------------------------------------
    def decode(self, token_ids: Any, skip_special_tokens: bool = False, **kwargs: Any) -> str:
        """One sequence of ids (int, list or 1-D tensor; a (1, T) tensor too) -> text."""
        kwargs.pop("clean_up_tokenization_spaces", None)  # minift decodes as the checkpoint's tokenizer does
        if kwargs:
            raise TypeError(f"decode: minift does not implement {sorted(kwargs)}")
        if isinstance(token_ids, torch.Tensor):
            if token_ids.dim() == 2 and token_ids.shape[0] == 1:
                token_ids = token_ids[0]
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        return super().decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        """Each row of a (N, T) tensor or list of id lists -> its text."""
        rows = sequences.tolist() if isinstance(sequences, torch.Tensor) else sequences
        return [self.decode(row, skip_special_tokens=skip_special_tokens, **kwargs) for row in rows]

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False) -> str | list[str]:
        if isinstance(ids, int) or isinstance(ids, torch.Tensor) and ids.dim() == 0:
            return super().convert_ids_to_tokens([int(ids)])[0]
        tokens = super().convert_ids_to_tokens(ids.tolist() if isinstance(ids, torch.Tensor) else list(ids))
        return [t for t in tokens if not (skip_special_tokens and t in self.all_special_tokens)]


def _is_single(text: Any, split: bool) -> bool:
    """transformers' rule: a str is one sequence; with is_split_into_words, a list of str is one."""
    if isinstance(text, str):
        if split:
            raise ValueError("is_split_into_words=True expects a list of words (or a list of such lists), "
                             "not a string")
        return True
    if not isinstance(text, (list, tuple)) or not text:
        raise ValueError(f"text must be a string or a non-empty list of strings, got {text!r:.80}")
    return split and isinstance(text[0], str)


def _as_batch(text: Any, single: bool, name: str) -> list:
    batch = [text] if single else list(text)
    for i, item in enumerate(batch):
        ok = isinstance(item, str) or isinstance(item, (list, tuple)) and all(isinstance(w, str) for w in item)
        if not ok:
            raise TypeError(f"{name}[{i}] must be a string (or a list of words), got {type(item).__name__}")
    return batch


def _finish_batch(batch: BatchEncoding, single: bool, return_tensors: str | None,
                  return_attention_mask: bool | None, return_token_type_ids: bool | None) -> BatchEncoding:
    """Keep the outputs asked for, as tensors or lists; one sequence unwraps to flat lists."""
    if return_tensors not in ("pt", None):
        raise ValueError(f"return_tensors must be 'pt' or None (minift works with torch tensors), got "
                         f"{return_tensors!r}")
    if return_attention_mask is False:
        batch.pop("attention_mask", None)
    if return_token_type_ids is False:
        batch.pop("token_type_ids", None)
    elif return_token_type_ids and "token_type_ids" not in batch:
        batch["token_type_ids"] = [[0] * len(row) for row in batch["input_ids"]]
    for key, value in batch.items():
        if return_tensors == "pt":
            lengths = {len(row) for row in value}
            if len(lengths) > 1:
                raise ValueError(f"sequences of lengths {sorted(lengths)} cannot stack into one tensor; pass "
                                 "padding=True (and truncation=True) to make them equal")
            batch[key] = torch.tensor(value, dtype=torch.long)
        elif single:
            batch[key] = value[0]
    return batch


class BertTokenizer(TransformersTokenizer, WordPieceTokenizer):
    """BERT's WordPiece tokenizer written out by hand (wordpiece.py), with transformers' calls."""


class BertTokenizerFast(TransformersTokenizer, FastTokenizer):
    """BERT's tokenizer over the `tokenizers` package (fast.py), with transformers' calls."""


class GPT2Tokenizer(TransformersTokenizer, ByteLevelBPETokenizer):
    """GPT-2's byte-level BPE tokenizer written out by hand (bpe.py), with transformers' calls."""


class GPT2TokenizerFast(TransformersTokenizer, FastTokenizer):
    """GPT-2's tokenizer over the `tokenizers` package (fast.py), with transformers' calls."""


# tokenizer_config.json's "tokenizer_class" -> (hand-written class, fast class). A new tokenizer adds a row.
TOKENIZER_CLASSES: dict[str, tuple[type, type]] = {
    "BertTokenizer": (BertTokenizer, BertTokenizerFast),
    "BertTokenizerFast": (BertTokenizer, BertTokenizerFast),
    "GPT2Tokenizer": (GPT2Tokenizer, GPT2TokenizerFast),
    "GPT2TokenizerFast": (GPT2Tokenizer, GPT2TokenizerFast),
}


class AutoTokenizer:
    """The tokenizer of a checkpoint folder, by its tokenizer_config.json's tokenizer_class, else by
    its files (vocab.txt: BERT; vocab.json + merges.txt: GPT-2). use_fast=True (the default, as in
    transformers) gives the class over the `tokenizers` package, False the hand-written one: the
    same ids either way."""

    def __init__(self) -> None:
        raise TypeError("AutoTokenizer is not built directly: use AutoTokenizer.from_pretrained(folder)")

    @classmethod
    def from_pretrained(cls, name_or_folder: str | os.PathLike, *, use_fast: bool = True, **kwargs: Any):
        folder = resolve_tokenizer_folder(name_or_folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
        config = read_json(folder / TOKENIZER_CONFIG) if (folder / TOKENIZER_CONFIG).is_file() else {}
        name = config.get("tokenizer_class") if isinstance(config, dict) else None
        if name is None:
            name = _class_by_files(folder)
        if name not in TOKENIZER_CLASSES:
            raise ValueError(f"{folder / TOKENIZER_CONFIG}: tokenizer_class {name!r} is not a tokenizer minift "
                             f"implements (known: {', '.join(TOKENIZER_CLASSES)})")
        readable, fast = TOKENIZER_CLASSES[name]
        return (fast if use_fast else readable).from_pretrained(folder, **kwargs)


def _class_by_files(folder: Path) -> str:
    if (folder / VOCAB_JSON).is_file() and (folder / MERGES_TXT).is_file():
        return "GPT2Tokenizer"
    if (folder / VOCAB_TXT).is_file():
        return "BertTokenizer"
    if (folder / TOKENIZER_JSON).is_file():
        model = read_json(folder / TOKENIZER_JSON).get("model", {}).get("type")
        return {"WordPiece": "BertTokenizer", "BPE": "GPT2Tokenizer"}.get(model, str(model))
    raise FileNotFoundError(f"{folder} holds no tokenizer files (vocab.txt, vocab.json + merges.txt or "
                            f"tokenizer.json)")
