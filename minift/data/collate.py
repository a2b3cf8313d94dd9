"""Batches: a list of `Example`s -> a dict of padded tensors, and a reproducible DataLoader (lesson 10).

Dynamic padding: each batch is padded to its own longest sequence (``padding="longest"``), not to a
fixed ``max_length``. Attention cost grows with the padded length T, so short batches stay cheap;
the padded positions get ``attention_mask = 0`` and change nothing in the outputs (lesson 04).
lessons/10-data.md counts the padded tokens both ways on the SST dev set.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader

from minift.data.readers import DataError, Example, LabelMap
from minift.data.sampler import EpochBatchSampler
from minift.losses import IGNORE_INDEX

# What a model's forward takes from the tokenizer's output; anything else it returns stays out.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class ClassificationCollate:
    """``collate(examples) -> {"input_ids", "attention_mask", "token_type_ids", "labels"}``.

    ``tokenizer`` follows the interface of `minift.tokenizer`: ``tokenizer(texts, text_pairs=None,
    max_length=..., padding="longest", truncation=True, return_tensors="pt")`` returns a dict of
    (B, T) tensors. A class rather than a closure so that DataLoader worker processes can pickle it.
    """

    def __init__(self, tokenizer: Callable, labels: LabelMap, max_length: int = 128):
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.tokenizer = tokenizer
        self.labels = labels
        self.max_length = max_length

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        pairs = _text_pairs(examples)
        encoded = self.tokenizer([e.text for e in examples], text_pairs=pairs, max_length=self.max_length,
                                 padding="longest", truncation=True, return_tensors="pt")
        batch = {name: encoded[name] for name in MODEL_INPUTS if name in encoded}
        _check_shapes(batch, len(examples))
        # (B,) class ids; an unknown label names its file:line and the labels the model knows.
        batch["labels"] = torch.tensor([self.labels.encode(e.label, e.source) for e in examples],
                                       dtype=torch.long)
        return batch


def make_classification_collate(tokenizer: Callable, labels: LabelMap, *,
                                max_length: int = 128) -> ClassificationCollate:
    """The collate function of a sequence-classification run (see `ClassificationCollate`)."""
    return ClassificationCollate(tokenizer, labels, max_length=max_length)


def _text_pairs(examples: Sequence[Example]) -> list[str] | None:
    """Second segments if every example has one, None if none has; a mix is a data error."""
    with_pair = [e.text_pair is not None for e in examples]
    if all(with_pair):
        return [e.text_pair for e in examples]
    if any(with_pair):
        first, odd = examples[0], examples[with_pair.index(not with_pair[0])]
        has = {True: "has a text_pair", False: "has no text_pair"}
        raise DataError(f"{odd.source}: this example {has[not with_pair[0]]} but {first.source} "
                        f"{has[with_pair[0]]}; a dataset is either single texts or pairs")
    return None


def _check_shapes(batch: dict[str, torch.Tensor], size: int) -> None:
    """The tokenizer must return (B, T) tensors, all of one shape; say which one is off."""
    for name in ("input_ids", "attention_mask"):
        if name not in batch:
            raise ValueError(f"the tokenizer returned no {name!r} (keys: {sorted(batch)})")
    expected = batch["input_ids"].shape
    if len(expected) != 2 or expected[0] != size:
        raise ValueError(f"tokenizer input_ids has shape {tuple(expected)}, expected ({size}, T) "
                         f"for a batch of {size} examples")
    for name, tensor in batch.items():
        if tensor.shape != expected:
            raise ValueError(f"tokenizer {name} has shape {tuple(tensor.shape)} but input_ids has "
                             f"shape {tuple(expected)}")


def make_loader(examples: Sequence[Example], collate: Callable, batch_size: int, shuffle: bool = False,
                seed: int = 0, *, pin_memory: bool = False, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A DataLoader over ``examples`` whose order depends only on ``seed`` and the epoch.

    Batches come from `EpochBatchSampler` (minift/data/sampler.py): epoch e's permutation is drawn
    from a generator seeded with (seed, e), not from the global RNG, so the order is the same on every
    run with the same seed whatever else consumed random numbers (dropout, weight init), a resumed run
    can rebuild it, and P processes split each global batch between them. The DataLoader gets its own
    generator too: otherwise each new iterator draws a seed from the global RNG, and a resumed run's
    dropout masks would drift from those of the run it continues.
    """
    # The sampler checks the number of examples, batch_size and the rank.
    sampler = EpochBatchSampler(len(examples), batch_size, shuffle=shuffle, seed=seed, rank=rank,
                                world_size=world_size)
    return DataLoader(list(examples), batch_sampler=sampler, collate_fn=collate, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed))


# --- token classification (NER, lessons/17-ner.md) ------------------------------------------------
# A CoNLL sentence arrives already split into words, each with one tag. The model sees sub-word
# tokens, so every word's tag has to be moved onto its tokens ("label alignment"), and the model's
# per-token predictions moved back onto the words at evaluation.
#
# Why word by word: our tokenizers number the words of *their own* pre-tokenizer (whitespace and
# punctuation cuts), so joining the words with spaces gives the same ids — BERT's normalizer and
# pre-tokenizer act on one character at a time, and a space is always a cut — but not the same word
# indices: "don't" is one CoNLL word and three BERT words ("don", "'", "t"). Encoding each word on its
# own gives the index of the caller's word directly, exactly as transformers'
# ``is_split_into_words=True`` does (it also pre-tokenizes each word separately).

NO_WORD = -1  # word id of a token that belongs to no word ([CLS], [SEP], padding) in a tensor


def encode_words(tokenizer, words: Sequence[str]) -> tuple[list[int], list[int]]:
    """Sub-word ids of pre-split ``words`` (no special tokens) and, for each id, its word's index.

    A word can give several ids ("Empire" -> one, "ESB" -> "es", "##b") or none at all (a lone
    zero-width or control character is removed by BERT's normalizer); such a word has no token.
    """
    ids: list[int] = []
    word_ids: list[int] = []
    for index, word in enumerate(words):
        # WordPieceTokenizer caches the ids of every word it has seen, so this loop stays cheap.
        pieces = tokenizer.encode(word, add_special_tokens=False, truncation=False)
        ids += pieces
        word_ids += [index] * len(pieces)
    return ids, word_ids


def bert_template(tokenizer, ids: list[int], word_ids: list[int], max_length: int
                  ) -> tuple[list[int], list[int | None], int]:
    """``[CLS] ids [SEP]`` cut to ``max_length`` tokens: (ids, word ids with None on the specials,
    number of words whose first token was cut away)."""
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError("token classification needs a BERT-style tokenizer with [CLS] and [SEP] tokens; "
                         f"{type(tokenizer).__name__} has {tokenizer.special_tokens_map}")
    if max_length < 3:
        raise ValueError(f"max_length={max_length} cannot hold [CLS], one token and [SEP]")
    keep = max_length - 2
    kept_words = set(word_ids[:keep])
    n_cut = len(set(word_ids) - kept_words)  # a word cut after its first token still has a label
    ids = [tokenizer.cls_token_id, *ids[:keep], tokenizer.sep_token_id]
    word_ids = [None, *word_ids[:keep], None]
    return ids, word_ids, n_cut


def continuation_labels(labels: LabelMap) -> list[int]:
    """For ``label_all_subtokens``: the label id of a word's later pieces, indexed by the word's label
    id. "B-X" becomes "I-X" when the label set has it (one entity must not begin twice inside one
    word); every other tag is copied, as transformers' run_ner.py does."""
    continued = []
    for name in labels.names:
        inside = "I-" + name[2:] if name.startswith("B-") else name
        continued.append(labels.label2id.get(inside, labels.label2id[name]))
    return continued


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int], *,
                 continuation: Sequence[int] | None = None) -> list[int]:
    """One label per token: the word's label on its first token, IGNORE_INDEX on special tokens and,
    unless ``continuation`` (from `continuation_labels`) is given, on the word's later pieces."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE_INDEX)
        elif word != previous:
            labels.append(word_labels[word])
        else:
            labels.append(IGNORE_INDEX if continuation is None else continuation[word_labels[word]])
        previous = word
    return labels


class TokenClassificationCollate:
    """``collate(sentences) -> {"input_ids", "attention_mask", "token_type_ids", "labels"}`` (B, T).

    ``sentences`` are ``(words, tags)`` pairs as `read_conll` returns them. ``keep_words=True`` adds
    what evaluation needs to score whole words: ``"word_ids"`` (B, T) with ``NO_WORD`` off words,
    and ``"tags"``, the gold tag lists. A sentence longer than ``max_length`` tokens loses its last
    words; the first time that happens a warning says how many (they are then predicted "O").
    """

    def __init__(self, tokenizer, labels: LabelMap, max_length: int = 128, *,
                 label_all_subtokens: bool = False, keep_words: bool = False):
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3 ([CLS], a token, [SEP]), got {max_length}")
        self.tokenizer = tokenizer
        self.labels = labels
        self.max_length = max_length
        self.continuation = continuation_labels(labels) if label_all_subtokens else None
        self.keep_words = keep_words
        self._warned_cut = False

    def __call__(self, sentences: Sequence[tuple[Sequence[str], Sequence[str]]]) -> dict:
        if not sentences:
            raise ValueError("cannot collate an empty batch")
        rows = [self._encode(words, tags) for words, tags in sentences]  # (ids, word_ids, labels)
        length = max(len(ids) for ids, _, _ in rows)  # T: the longest sentence of the batch
        pad = self.tokenizer.pad_token_id

        def padded(values: list, fill: int) -> list:
            return values + [fill] * (length - len(values))

        batch = {
            "input_ids": torch.tensor([padded(ids, pad) for ids, _, _ in rows]),  # (B, T)
            "attention_mask": torch.tensor([padded([1] * len(ids), 0) for ids, _, _ in rows]),
            "token_type_ids": torch.zeros(len(rows), length, dtype=torch.long),  # one segment
            "labels": torch.tensor([padded(labels, IGNORE_INDEX) for _, _, labels in rows]),
        }
        if "token_type_ids" not in self.tokenizer.model_input_names:
            del batch["token_type_ids"]
        if self.keep_words:
            batch["word_ids"] = torch.tensor(
                [padded([NO_WORD if w is None else w for w in word_ids], NO_WORD) for _, word_ids, _ in rows])
            batch["tags"] = [list(tags) for _, tags in sentences]
        return batch

    def _encode(self, words: Sequence[str], tags: Sequence[str]) -> tuple[list[int], list, list[int]]:
        if len(words) != len(tags):
            raise ValueError(f"a sentence has {len(words)} words but {len(tags)} tags: {list(words)[:8]}")
        ids, word_ids = encode_words(self.tokenizer, words)
        ids, word_ids, n_cut = bert_template(self.tokenizer, ids, word_ids, self.max_length)
        if n_cut and not self._warned_cut:
            self._warned_cut = True
            warnings.warn(f"a sentence of {len(words)} words is longer than max_length={self.max_length} "
                          f"tokens: its last {n_cut} words are cut and predicted 'O' (shown once; raise "
                          f"--max-length to keep them)", stacklevel=3)
        word_labels = [self.labels.encode(tag) for tag in tags]
        return ids, word_ids, align_labels(word_ids, word_labels, continuation=self.continuation)


def make_token_classification_collate(tokenizer, labels: LabelMap, *, max_length: int = 128,
                                      label_all_subtokens: bool = False,
                                      keep_words: bool = False) -> TokenClassificationCollate:
    """The collate function of a NER run (see `TokenClassificationCollate`)."""
    return TokenClassificationCollate(tokenizer, labels, max_length, label_all_subtokens=label_all_subtokens,
                                      keep_words=keep_words)
