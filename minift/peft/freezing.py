"""Freezing: choose which pretrained parameters receive gradients.

Lesson: `lessons/19-lora-and-freezing.md` (section "Freezing: which parameters learn").

The strategies are the ones the transfer-learning literature compares: train the head only (feature
extraction), freeze the embeddings, freeze the lower layers and tune the upper ones (Howard & Ruder
2018, "Universal Language Model Fine-tuning", sec. 3.2 on why lower layers hold more general
features; Lee et al. 2019, "What Would Elsa Do? Freezing Layers During Transformer Fine-Tuning",
which finds that tuning only the upper part of BERT keeps most of the quality).

Where the embeddings and the blocks of an architecture live is data: the `layout` of its row in
minift/models/architectures.py, the one table of architectures. Everything else in the base model
(BERT's pooler, GPT-2's final ln_f) sits above the blocks; the task head is everything outside the
base model.

Leaves out: gradual unfreezing and discriminative learning rates (Howard & Ruder sec. 3.2-3.3), which
change the strategy or the optimizer during a run; here a strategy is set once, before the optimizer
is built (lesson 19, exercise 1).
"""

from __future__ import annotations

from torch import nn

from minift.models.architectures import architecture_of
from minift.models.config import is_int

STRATEGIES = ("none", "embeddings", "first-n", "last-block", "head-only")


def check_strategy(strategy: str, n: int | None, names: tuple[str, str] = ("freeze", "n")) -> None:
    """A strategy and its n, checked before anything changes. `names` is how the errors call the
    strategy and n (setup_peft names its keywords and the CLI flags, `freeze` its own arguments)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"{names[0]}: unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if strategy == "first-n" and n is None:
        raise ValueError(f"{names[0]}: strategy 'first-n' needs {names[1]}, the number of blocks to freeze; "
                         f"got None")
    if strategy != "first-n" and n is not None:  # silently ignoring it would hide a mistyped strategy
        raise ValueError(f"{names[0]}: {names[1]} is only used by strategy 'first-n', not by {strategy!r}; "
                         f"got {n!r}")
    if n is not None and not is_int(n):
        raise ValueError(f"{names[0]}: {names[1]} must be a whole number of blocks, got {n!r}")


def freeze(model: nn.Module, strategy: str, n: int | None = None) -> list[str]:
    """Set `requires_grad` of every parameter for `strategy`; return the frozen names (model order).

    "none": everything trains.   "embeddings": the input embeddings are frozen.
    "first-n": the embeddings and blocks 0..n-1 are frozen (0 <= n <= number of blocks).
    "last-block": only the last block, what sits above it (pooler / final norm) and the head train.
    "head-only": only the task head trains (the pretrained model is a fixed feature extractor).

    The strategy describes the whole model: parameters it does not freeze are set trainable again.
    """
    check_strategy(strategy, n)
    if strategy == "none":  # nothing to locate: every parameter trains, whatever the model's layout
        for p in model.parameters():
            p.requires_grad_(True)
        return []
    parts = _parts(model)
    num_blocks = 1 + max((i for part, i in parts.values() if part == "block"), default=-1)
    if num_blocks == 0:
        arch = architecture_of(model)
        raise ValueError(f"freeze: {type(model).__name__} has no parameter under '{arch.layout.blocks}.<i>.', "
                         f"where ARCHITECTURES[{arch.model_type!r}].layout says its blocks are")
    freeze_embeddings, blocks_below, freeze_top = _plan(strategy, n, num_blocks)
    frozen = [name for name, (part, i) in parts.items()
              if (part == "embeddings" and freeze_embeddings)
              or (part == "block" and i < blocks_below)
              or (part == "top" and freeze_top)]
    if len(frozen) == len(parts):
        raise ValueError(f"freeze: strategy {strategy!r} leaves {type(model).__name__} with no trainable "
                         "parameter (a base model has no task head to train)")
    frozen_set = set(frozen)
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen_set)
    return frozen


def _plan(strategy: str, n: int | None, num_blocks: int) -> tuple[bool, int, bool]:
    """A strategy as (freeze the embeddings?, freeze the blocks below this index, freeze the top?)."""
    if strategy == "first-n" and not 0 <= n <= num_blocks:
        raise ValueError(f"freeze: first-n with n={n} is out of range: the model has {num_blocks} blocks, "
                         f"so n must be in [0, {num_blocks}]")
    return {
        "none": (False, 0, False),
        "embeddings": (True, 0, False),
        "first-n": (True, n, False),
        "last-block": (True, num_blocks - 1, False),
        "head-only": (True, num_blocks, True),
    }[strategy]


def _base_prefix(model: nn.Module) -> str:
    """"bert." in a head model (whose base model is the child `bert`), "" in a base model."""
    prefix = getattr(model, "base_model_prefix", "")
    return f"{prefix}." if prefix and prefix in dict(model.named_children()) else ""


def _parts(model: nn.Module) -> dict[str, tuple[str, int]]:
    """Parameter name -> (part, block index), part in "embeddings", "block", "top" (the rest of the
    base model) and "head" (outside the base model); the index is -1 outside the blocks."""
    layout, prefix = architecture_of(model).layout, _base_prefix(model)
    parts = {}
    for name, _ in model.named_parameters():
        if not name.startswith(prefix):
            parts[name] = ("head", -1)
            continue
        inner = name[len(prefix):]
        if any(inner.startswith(e + ".") for e in layout.embeddings):
            parts[name] = ("embeddings", -1)
        elif inner.startswith(layout.blocks + "."):
            parts[name] = ("block", int(inner[len(layout.blocks) + 1:].split(".")[0]))
        else:
            parts[name] = ("top", -1)
    return parts
