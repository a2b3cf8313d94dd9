"""Batches: a list of `Example`s -> a dict of padded tensors, and a reproducible DataLoader (lesson 10).

Dynamic padding: each batch is padded to its own longest sequence (``padding="longest"``), not to a
fixed ``max_length``. Attention cost grows with the padded length T, so short batches stay cheap;
the padded positions get ``attention_mask = 0`` and change nothing in the outputs (lesson 04).
lessons/10-data.md counts the padded tokens both ways on the SST dev set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader

from minift.data.readers import DataError, Example, LabelMap

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
                seed: int = 0, *, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``examples`` whose shuffling depends only on ``seed``.

    The sampler draws from its own ``torch.Generator`` instead of the global RNG, so the order of the
    examples is the same on every run with the same seed, whatever else consumed random numbers
    (dropout, weight init). Epoch e+1 continues the generator, so each epoch gets a new order.
    """
    if not examples:
        raise ValueError("cannot make a loader over an empty list of examples")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(list(examples), batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      generator=generator, pin_memory=pin_memory)
