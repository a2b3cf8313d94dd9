"""The neural-network pieces, written by hand: softmax, GELU and LayerNorm (functional.py, lesson 03),
scaled dot-product attention (attention.py, lesson 04) and BERT's encoder layer (blocks.py, lesson 05)."""

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
