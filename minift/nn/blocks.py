"""Transformer blocks. BERT's post-LN encoder layer, with the checkpoint's module names.

Lesson: `lessons/05-bert.md` (the post-LN layer, and why the names are the checkpoint's names).

One BERT layer (Devlin et al. 2019, sec. 3, which uses the encoder of Vaswani et al. 2017 unchanged):
    a = LayerNorm(x + Dropout(Dense(MultiHeadSelfAttention(x))))       "attention"
    y = LayerNorm(a + Dropout(Dense(GELU(Dense(a)))))                   "intermediate", "output"
"Post-LN": LayerNorm(x + Sublayer(x)), the normalisation *after* the residual sum (Vaswani et al.
sec. 3.1), with dropout on the sublayer's output before the sum (sec. 5.4). GPT-2's pre-LN block,
x + Sublayer(LayerNorm(x)), lives in minift/models/gpt2.py.

The attribute names (`attention.self.query`, `attention.output.LayerNorm`, `intermediate.dense`,
`output.dense`, ...) are exactly the tensor names of the public BERT checkpoints, so loading is a
plain `load_state_dict` with no renaming table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from minift.nn.attention import attention, merge_heads, split_heads
from minift.nn.functional import Dropout, LayerNorm, activation

if TYPE_CHECKING:
    from minift.models.bert import BertConfig


class BertSelfAttention(nn.Module):
    """Multi-head self-attention (Vaswani et al. sec. 3.2.2) without the output projection,
    which the checkpoint stores under `attention.output.dense`."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout_p = config.attention_probs_dropout_prob
        self.impl = config.attn_impl

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = split_heads(self.query(x), self.num_heads)  # (B, H, T, D)
        k = split_heads(self.key(x), self.num_heads)  # (B, H, T, D)
        v = split_heads(self.value(x), self.num_heads)  # (B, H, T, D)
        out = attention(q, k, v, mask, dropout_p=self.dropout_p, training=self.training, impl=self.impl)
        return merge_heads(out)  # (B, T, C)


class BertResidualOutput(nn.Module):
    """Dense -> Dropout -> LayerNorm(residual + .): the post-LN end of both sublayers.
    In the checkpoint: `attention.output.*` (in = C) and `output.*` (in = intermediate_size)."""

    def __init__(self, config: BertConfig, in_features: int) -> None:
        super().__init__()
        fast = config.attn_impl == "sdpa"
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, fast=fast)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))  # (B, T, C)


class BertAttention(nn.Module):
    """Sublayer 1: a = LayerNorm(x + Dropout(Dense(SelfAttention(x))))."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertResidualOutput(config, config.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), residual=x)


class BertIntermediate(nn.Module):
    """The first half of the position-wise feed-forward network (Vaswani et al. sec. 3.3): C -> 4C, GELU."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act, fast=config.attn_impl == "sdpa")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))  # (B, T, intermediate_size)


class BertLayer(nn.Module):
    """One post-LN encoder layer: attention sublayer, then feed-forward sublayer."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config, config.intermediate_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, C), mask additive (B, 1, 1, T) or None -> (B, T, C)."""
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), residual=a)
