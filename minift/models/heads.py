"""What the task heads of BERT and GPT-2 share: the label maps of their configs and the losses
(lessons 05 and 21).

A head maps hidden states to logits; what differs between the families is which hidden state it
reads (BERT's pooled [CLS], GPT-2's last real token). The class names in the config (id2label,
label2id, num_labels) and the loss on the logits are the same, so they live here once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from minift.losses import binary_cross_entropy_with_logits, cross_entropy

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


# ----------------------------------------------------------------------------------------------------
# Label maps of a config
# ----------------------------------------------------------------------------------------------------


def parse_label_map(key: str, value: Any, source: str, error: type[ValueError]) -> dict:
    """A label map as config.json holds it -> Python keys: id2label {"0": "NEG"} -> {0: "NEG"},
    label2id {"NEG": "0"} -> {"NEG": 0}. `error` is the model's config error class; `source` names
    the file."""
    if not isinstance(value, dict):
        raise error(f"{source}: {key} must be a JSON object, got {type(value).__name__}")
    try:
        if key == "id2label":
            return {int(i): str(name) for i, name in value.items()}
        return {str(name): int(i) for name, i in value.items()}
    except (TypeError, ValueError):
        raise error(f"{source}: {key} must map integer ids and label names, got {value}") from None


def settle_labels(config: Any, source: str, error: type[ValueError]) -> None:
    """Makes config.num_labels, .id2label and .label2id consistent, as transformers does: names given
    with no num_labels (or a matching one) are kept and label2id is derived from them; a num_labels
    that disagrees with id2label wins and renames the classes LABEL_0, LABEL_1, ... (transformers'
    num_labels setter). One output cannot be single-label classification (its softmax is always 1)."""
    if config.id2label is not None and config.num_labels in (None, len(config.id2label)):
        config.num_labels = len(config.id2label)
        inverse = {name: i for i, name in config.id2label.items()}
        if config.label2id is not None and config.label2id != inverse:
            raise error(f"{source}: label2id {config.label2id} is not the inverse of id2label "
                        f"{config.id2label}")
        config.label2id = inverse
    else:
        config.num_labels = 2 if config.num_labels is None else config.num_labels
        config.id2label = {i: f"LABEL_{i}" for i in range(config.num_labels)}
        config.label2id = {name: i for i, name in config.id2label.items()}
    if config.problem_type == "single_label_classification" and config.num_labels < 2:
        raise error(f"{source}: problem_type single_label_classification needs num_labels >= 2, "
                    f"got {config.num_labels} (use problem_type 'regression' for one output)")


def label_maps_for_json(config: Any) -> dict[str, dict]:
    """id2label and label2id as config.json holds them: JSON object keys are strings."""
    return {"id2label": {str(i): name for i, name in config.id2label.items()},
            "label2id": dict(config.label2id)}


# ----------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------


def problem_type(configured: str | None, num_labels: int, labels: torch.Tensor) -> str:
    """``configured`` (config.problem_type), or inferred as transformers does: one output is
    regression, integer labels are single-label classes, float labels are multi-hot rows."""
    if configured is not None:
        return configured
    if num_labels == 1:
        return "regression"
    if labels.dtype in (torch.int64, torch.int32):
        return "single_label_classification"
    return "multi_label_classification"


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int,
                                 configured_problem: str | None) -> torch.Tensor:
    """Cross-entropy for classes, binary cross-entropy for multi-hot rows, MSE for regression."""
    problem = problem_type(configured_problem, num_labels, labels)
    if problem == "single_label_classification":
        return cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1))
    target = labels.to(logits.dtype)  # regression scores or 0/1 multi-hot, as floats
    if problem == "multi_label_classification":
        return binary_cross_entropy_with_logits(logits, target)
    if num_labels == 1:  # one score per sequence: logits (B, 1), labels (B,) or (B, 1)
        logits = logits.squeeze(-1)  # (B,)
        if target.numel() == logits.numel():
            target = target.reshape(logits.shape)
    if logits.shape != target.shape:  # F.mse_loss would broadcast them into a wrong loss
        raise ValueError(f"regression labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    return F.mse_loss(logits, target)


def token_classification_loss(logits: torch.Tensor, labels: torch.Tensor,
                              input_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every position of logits (B, T, num_labels) against labels (B, T), one label
    per token of input_ids; -100 marks positions that are not scored (padding, later sub-tokens)."""
    if labels.shape != input_ids.shape:  # a flattened mismatch could still line up: catch it by shape
        raise ValueError(f"labels have shape {tuple(labels.shape)}, input_ids {tuple(input_ids.shape)}: "
                         "one label (or -100) per token")
    return cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
