"""What the task heads of BERT and GPT-2 share: the losses on their logits (lessons 05 and 15).

A head maps hidden states to logits; what differs between the families is which hidden state it
reads (BERT's pooled [CLS], GPT-2's last real token). The loss on the logits is the same, so it lives
here once; the label maps of the configs are in minift/models/config.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minift.losses import IGNORE_INDEX, binary_cross_entropy_with_logits, cross_entropy

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
                                 configured_problem: str | None, fast: bool = False) -> torch.Tensor:
    """Cross-entropy for classes, binary cross-entropy for multi-hot rows, MSE for regression.
    fast: torch's fused cross-entropy (minift.losses.cross_entropy(fast=True)), the same numbers."""
    problem = problem_type(configured_problem, num_labels, labels)
    if problem == "single_label_classification":
        return cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1), fast=fast)
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
                              input_ids: torch.Tensor, fast: bool = False) -> torch.Tensor:
    """Cross-entropy over every position of logits (B, T, num_labels) against labels (B, T), one label
    per token of input_ids; IGNORE_INDEX (-100) marks positions that are not scored (padding, later
    sub-tokens, unmasked tokens). Token classification and BERT's masked LM (labels: token ids).
    fast: torch's fused cross-entropy (minift.losses.cross_entropy(fast=True)), the same numbers."""
    if labels.shape != input_ids.shape:  # a flattened mismatch could still line up: catch it by shape
        raise ValueError(f"labels have shape {tuple(labels.shape)}, input_ids {tuple(input_ids.shape)}: "
                         f"one label (or IGNORE_INDEX = {IGNORE_INDEX}, not scored) per token")
    return cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), fast=fast)
