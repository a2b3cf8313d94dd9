"""What a training step minimises, and what that loss is a mean *over* (lessons/21-accumulation-and-ddp.md).

A model's loss is a mean: over the examples of the batch (sequence classification), over its labelled
tokens (token classification, masked LM), or over its predicted next tokens (causal LM). Gradient
accumulation and data parallelism both cut one batch into parts and add the parts' gradients, so each
part's mean has to be weighted by its share of the whole:

    L = (1/N) sum_i l_i = sum_k (n_k / N) * mean_k,     n_k = units in part k,  N = sum_k n_k

With equal parts n_k / N = 1/K, but a token-level part with few labelled tokens would otherwise weigh
as much as one with many, and a short last batch as much as a full one. `Objective.units` counts n_k;
the loop (minift/train/loop.py) does the weighting.

Class weights and label smoothing (`--class-weights`, `--label-smoothing`) change the loss itself:
the loss is then minift's own `cross_entropy` on the model's logits, and with class weights the "units"
are the summed weights of the targets, as `cross_entropy(weight=...)`'s mean divides by them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from minift.losses import IGNORE_INDEX, cross_entropy

UNITS = ("examples", "tokens", "next-tokens")


@dataclass
class Objective:
    """unit: "examples" (the loss is a mean over the batch's rows), "tokens" (over labels != -100) or
    "next-tokens" (a causal LM: over labels[:, 1:] != -100, the positions that have a next token)."""

    unit: str = "examples"
    class_weights: torch.Tensor | None = None  # (C,) one weight per label, as cross_entropy(weight=)
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.custom and self.unit == "next-tokens":
            raise ValueError("--class-weights and --label-smoothing apply to classification and ner, "
                             "not to causal-lm")

    @property
    def custom(self) -> bool:
        """True when the loss is computed here rather than by the model's own head."""
        return self.class_weights is not None or self.label_smoothing > 0

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The labels the loss is a mean over (shifted for a causal LM), -100 where nothing is scored."""
        return labels[:, 1:] if self.unit == "next-tokens" else labels

    def units(self, batch: dict) -> float:
        """n_k: how many things this batch's mean loss averages over."""
        labels = self.targets(batch["labels"])
        if self.unit == "examples" and self.class_weights is None:
            return float(labels.shape[0])
        scored = labels[labels != IGNORE_INDEX]
        if self.class_weights is not None:
            return float(self.class_weights.to(scored.device)[scored].sum())
        return float(scored.numel())

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """The batch's mean loss: the model's own when nothing is customised (so a plain run computes
        exactly what `model(**batch).loss` computes), else cross_entropy on its logits."""
        if not self.custom:
            return model(**batch).loss
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits  # (B, C) or (B, T, C)
        dtype = torch.promote_types(logits.dtype, torch.float32)  # a half-precision loss loses its digits
        weight = None if self.class_weights is None else self.class_weights.to(logits.device, dtype)
        config = getattr(getattr(model, "module", model), "config", None)  # DDP wraps the model as .module
        return cross_entropy(logits.reshape(-1, logits.shape[-1]).to(dtype), batch["labels"].reshape(-1),
                             weight=weight, label_smoothing=self.label_smoothing,
                             fast=getattr(config, "attn_impl", None) == "sdpa")  # the model's fast path


def class_weights(spec: str | None, names: Sequence[str], train_label_ids: Sequence[int]) -> torch.Tensor | None:
    """--class-weights as a (C,) tensor in label order (None without the flag): "balanced" from the
    training labels' counts, else the weights the flag lists."""
    if spec == "balanced":
        return balanced_weights(train_label_ids, len(names))
    return parse_class_weights(spec, names)


def parse_class_weights(text: str | None, names: Sequence[str]) -> torch.Tensor | None:
    """--class-weights: "balanced" (n / (C * count_c), scikit-learn's formula, needs counts via
    `balanced_weights`) is handled by `class_weights`; here "label=w,label=w" or "w,w,..." in label order."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if all("=" in p for p in parts):
        given = {}
        for p in parts:
            name, _, value = p.partition("=")
            if name.strip() not in names:
                raise ValueError(f"--class-weights: {name.strip()!r} is not a label of the training data "
                                 f"(labels: {', '.join(names)})")
            given[name.strip()] = _weight(value, text)
        missing = [n for n in names if n not in given]
        if missing:
            raise ValueError(f"--class-weights: no weight for {', '.join(missing)} (give one per label)")
        values = [given[n] for n in names]
    else:
        if len(parts) != len(names):
            raise ValueError(f"--class-weights: {len(parts)} weights for {len(names)} labels "
                             f"({', '.join(names)}); give one per label, in this order, or label=weight pairs")
        values = [_weight(p, text) for p in parts]
    return torch.tensor(values, dtype=torch.float32)


def balanced_weights(label_ids: Sequence[int], num_labels: int) -> torch.Tensor:
    """w_c = n / (C * n_c): each class then carries the same total weight (scikit-learn's
    compute_class_weight("balanced")). A class absent from training gets weight 0."""
    counts = torch.bincount(torch.as_tensor(list(label_ids)), minlength=num_labels).float()
    n = counts.sum()
    return torch.where(counts > 0, n / (num_labels * counts.clamp(min=1)), torch.zeros_like(counts))


def _weight(value: str, text: str) -> float:
    try:
        w = float(value)
    except ValueError:
        raise ValueError(f"--class-weights {text!r}: {value.strip()!r} is not a number") from None
    if not w >= 0 or w == float("inf"):
        raise ValueError(f"--class-weights {text!r}: weights must be finite and >= 0, got {value.strip()}")
    return w
