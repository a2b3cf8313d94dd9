"""The generic neural-network pieces, written by hand: softmax, GELU and LayerNorm (functional.py,
lesson 03) and scaled dot-product attention (attention.py, lesson 04). Nothing here knows a model:
BERT's layer is in minift/models/bert.py, GPT-2's block in minift/models/gpt2.py."""

from minift.nn.attention import attention, causal_mask, merge_heads, padding_mask, split_heads
from minift.nn.functional import (
    Dropout,
    LayerNorm,
    activation,
    dropout,
    gelu,
    gelu_tanh,
    layer_norm,
    softmax,
)

__all__ = [
    "Dropout",
    "LayerNorm",
    "activation",
    "attention",
    "causal_mask",
    "dropout",
    "gelu",
    "gelu_tanh",
    "layer_norm",
    "merge_heads",
    "padding_mask",
    "softmax",
    "split_heads",
]
