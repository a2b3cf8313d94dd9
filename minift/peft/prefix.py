"""Prefix tuning / P-tuning v2, written by hand: n learned keys and values in front of every layer's.

Lesson: `lessons/36-peft-methods.md` (section "Prefix tuning: virtual keys and values").

Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", sec. 4.2: every layer's
attention sees n extra (key, value) pairs that no token computed,

    head_i = Attention(x W_q, [P_k; x W_k], [P_v; x W_v])

so the prefix steers every layer, not only the input (prompt tuning). 2 L n C numbers. Training the
prefix directly is unstable (sec. 4.3), so it is reparameterised: P = MLP(P') with a smaller P' (n x C)
and a two-layer tanh MLP, used during training only; afterwards P is kept and the MLP dropped
(`--prefix-projection`). P-tuning v2 (Liu et al. 2022, sec. 3) is the same deep prompt applied to
encoders for understanding tasks, with or without the reparameterisation.

Layout, as `peft`'s PrefixEncoder: one (n, 2 L C) table; row t, viewed as (2L, H, D), holds layer i's
key in slice 2i and its value in 2i + 1. GPT-2 takes the prefix as a KV cache (`past_key_values`),
so its positions start at n as transformers' do after a cache of n; BERT's self-attention concatenates
it to its own keys and values (minift/models/bert.py). The attention mask gets n ones in front.

Leaves out: prefixes in an encoder-decoder's cross-attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minift.peft.trainable import base_model, head_modules, head_parameters


def attention_shape(config) -> tuple[int, int, int]:
    """(layers, heads, width) of a BERT-like (RoBERTa too) or GPT-2 config."""
    if hasattr(config, "n_layer"):
        return config.n_layer, config.n_head, config.n_embd
    return config.num_hidden_layers, config.num_attention_heads, config.hidden_size


class PrefixEncoder(nn.Module):
    """The prefix of every layer: `embedding` (n, 2 L C) directly, or with `projection`, a smaller
    `embedding` (n, C) through `transform` = Linear(C, hidden) -> tanh -> Linear(hidden, 2 L C)."""

    def __init__(self, num_virtual_tokens: int, layers: int, heads: int, dim: int,
                 projection: bool = False, hidden: int | None = None) -> None:
        super().__init__()
        self.num_virtual_tokens, self.layers, self.heads, self.dim = num_virtual_tokens, layers, heads, dim
        self.projection = projection
        if projection:
            self.embedding = nn.Embedding(num_virtual_tokens, dim)
            self.transform = nn.Sequential(nn.Linear(dim, hidden or dim), nn.Tanh(),
                                           nn.Linear(hidden or dim, layers * 2 * dim))
        else:
            self.embedding = nn.Embedding(num_virtual_tokens, layers * 2 * dim)

    def table(self) -> torch.Tensor:
        """The (n, 2 L C) table of keys and values, through the MLP when reparameterised."""
        return self.transform(self.embedding.weight) if self.projection else self.embedding.weight

    def forward(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (key, value), each (B, H, n, D), the same for every example of the batch."""
        n, heads = self.num_virtual_tokens, self.heads
        kv = self.table().view(n, 2 * self.layers, heads, self.dim // heads).permute(1, 2, 0, 3)  # (2L, H, n, D)
        return [(kv[2 * i].expand(batch, -1, -1, -1), kv[2 * i + 1].expand(batch, -1, -1, -1))
                for i in range(self.layers)]

    @torch.no_grad()
    def drop_projection(self) -> None:
        """Keep P = MLP(P') as the table and drop the MLP (Li & Liang sec. 4.3: only P is needed after
        training); the prefix computes the same."""
        if self.projection:
            table = self.table().detach().clone()
            del self.transform
            self.embedding = nn.Embedding.from_pretrained(table, freeze=False)
            self.projection = False


@dataclass
class PrefixConfig:
    num_virtual_tokens: int
    projection: bool
    encoder_hidden_size: int
    head: list[str]


def apply_prefix_tuning(model: nn.Module, num_virtual_tokens: int, projection: bool = False,
                        encoder_hidden_size: int | None = None, head=None) -> int:
    """Put a PrefixEncoder into the base model, freeze everything but it and the task head; return n."""
    if isinstance(num_virtual_tokens, bool) or not isinstance(num_virtual_tokens, int) or num_virtual_tokens < 1:
        raise ValueError(f"prefix tuning: the number of virtual tokens must be a positive integer, "
                         f"got {num_virtual_tokens!r}")
    base = base_model(model)
    if base.prompt_encoder is not None or base.prefix_encoder is not None:
        raise ValueError(f"prefix tuning: {type(model).__name__} already has virtual tokens; unload them first")
    heads = head_modules(model, head, "apply_prefix_tuning")
    layers, num_heads, dim = attention_shape(model.config)
    hidden = encoder_hidden_size or dim
    device = next(model.parameters()).device
    encoder = PrefixEncoder(num_virtual_tokens, layers, num_heads, dim, projection, hidden).to(device)
    model.requires_grad_(False)
    base.prefix_encoder = encoder.train(model.training)
    for p in head_parameters(model, heads).values():
        p.requires_grad_(True)
    model.prefix_config = PrefixConfig(num_virtual_tokens, projection, hidden, heads)
    return num_virtual_tokens


def prefix_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter: the prefix (and its MLP while reparameterised), then the head, by state-dict name."""
    prefix = model.base_model_prefix + "." if base_model(model) is not model else ""
    params = {f"{prefix}prefix_encoder.{name}": p for name, p in base_model(model).prefix_encoder.named_parameters()}
    params.update(head_parameters(model, model.prefix_config.head))
    return params
