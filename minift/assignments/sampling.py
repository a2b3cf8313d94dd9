"""Assignment `sampling`: the top-k and top-p (nucleus) filters of text generation (lesson 16)."""

from __future__ import annotations

import torch

from minift.assignments.base import Assignment, Item, Target

MODULE = "minift.generate"


def _inputs() -> dict:
    g = torch.Generator().manual_seed(13)
    logits = torch.randn(4, 20, generator=g) * 2
    logits[1, :5] = 3.0  # ties at the top
    logits[2] = torch.linspace(-1, 1, 20)
    return {"logits": logits}


def _top_k(module, inputs):
    return {f"k{k}": module.top_k_filter(inputs["logits"].clone(), k) for k in (1, 3, 5, 25)}


def _top_p(module, inputs):
    return {f"p{int(p * 100)}": module.top_p_filter(inputs["logits"].clone(), p) for p in (0.05, 0.5, 0.9, 1.0)}


ASSIGNMENT = Assignment(
    name="sampling",
    summary="top-k and top-p (nucleus) filtering of next-token logits",
    lesson="lessons/16-generation.md",
    targets=(
        Target(MODULE, "top_k_filter", "Keep the k largest logits of each row (ties with the k-th kept; k larger "
               "than the vocabulary keeps all), set the others to -inf."),
        Target(MODULE, "top_p_filter", "Sort each row's probabilities in descending order; keep a token iff the "
               "probability of the tokens ranked above it is < top_p (so the first is always kept); set the "
               "rest to -inf, in vocabulary order. top_p >= 1 keeps everything."),
    ),
    items=(
        Item("top-k", MODULE, _inputs, _top_k, "torch.topk gives the k-th largest value; keep logits >= it",
             tolerance=0.0),
        Item("top-p", MODULE, _inputs, _top_p, "the token that makes the cumulative probability reach top_p is "
             "still kept; scatter the decision back to vocabulary order", tolerance=1e-6),
    ),
)
