"""(IA)^3, written by hand: learned vectors that rescale a few activations, nothing else.

Lesson: `lessons/36-peft-methods.md` (section "(IA)^3: scaling activations").

Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", sec. 3.3: element-wise scaling vectors l_k, l_v and l_ff, all ones at the start,

    softmax(Q (l_k * K)^T / sqrt(d)) (l_v * V)          and          (l_ff * gelu(W1 x)) W2

so attention's keys and values and the feed-forward's inner activation are rescaled: d_k + d_v + d_ff
numbers per layer, the fewest of any method here. A scale is either on a Linear's *output* (keys,
values: y = l * (W x + b)) or on its *input* (the feed-forward's second Linear: y = W (l * x) + b),
which is how `peft` implements it and how `IA3Linear` does. Both fold into W exactly (`merge`).

Which Linears: those `peft` targets by default for each model (`IA3_TARGETS`, copied from peft's
TRANSFORMERS_MODELS_TO_IA3_*_MAPPING), so that an adapter file means the same in both. They differ from
the paper: for BERT, peft's "output.dense" also matches `attention.output.dense`, so the attention's
output projection gets an input scale the paper does not have; for GPT-2, `c_attn` projects q, k and v
at once, so the queries are scaled too. The lesson spells this out.

Leaves out: the paper's loss terms (unlikelihood and length normalisation, sec. 3.2; T-Few's recipe).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minift.peft.trainable import head_modules, head_parameters, matches, replace_module, target_linears

# model_type -> (target modules, the feed-forward ones among them, scaled on their input): peft's defaults.
# RoBERTa has BERT's module names.
IA3_TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bert": (("key", "value", "output.dense"), ("output.dense",)),
    "roberta": (("key", "value", "output.dense"), ("output.dense",)),
    "gpt2": (("c_attn", "mlp.c_proj"), ("mlp.c_proj",)),
}


class IA3Linear(nn.Module):
    """A frozen nn.Linear whose output (or, `feedforward`, whose input) is multiplied by a learned vector
    `ia3_l`, ones at the start. `weight` and `bias` are the wrapped Linear's own Parameters."""

    def __init__(self, base: nn.Linear, feedforward: bool) -> None:
        if not isinstance(base, nn.Linear):
            raise TypeError(f"IA3Linear wraps an nn.Linear, got {type(base).__name__}")
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.feedforward = feedforward
        self.register_parameter("weight", base.weight)
        self.register_parameter("bias", base.bias)
        size = self.in_features if feedforward else self.out_features
        self.ia3_l = nn.Parameter(torch.ones(size, dtype=base.weight.dtype, device=base.weight.device))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        if self.feedforward:
            return F.linear(x * self.ia3_l, self.weight, self.bias)  # W (l * x) + b
        return F.linear(x, self.weight, self.bias) * self.ia3_l  # l * (W x + b)

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear computing the same: the columns (input scale) or the rows and the bias
        (output scale) of W multiplied by l."""
        if not self.merged:
            if self.feedforward:
                self.weight.mul_(self.ia3_l[None, :])
            else:
                self.weight.mul_(self.ia3_l[:, None])
                if self.bias is not None:
                    self.bias.mul_(self.ia3_l)
            self.merged = True
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.train(self.training)
        linear.weight = self.weight
        if self.bias is not None:
            linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        where = "input" if self.feedforward else "output"
        return f"in_features={self.in_features}, out_features={self.out_features}, scales={where}"


@dataclass
class IA3Config:
    target_modules: list[str]
    feedforward_modules: list[str]
    head: list[str]


def ia3_targets(model: nn.Module) -> tuple[list[str], list[str]]:
    """peft's default (targets, feed-forward targets) for the model's model_type."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in IA3_TARGETS:
        raise ValueError(f"(IA)^3: no default target modules for model_type {model_type!r} "
                         f"(known: {', '.join(IA3_TARGETS)})")
    targets, feedforward = IA3_TARGETS[model_type]
    return list(targets), list(feedforward)


def apply_ia3(model: nn.Module, target_modules: Sequence[str] | None = None,
              feedforward_modules: Sequence[str] | None = None, head: Sequence[str] | None = None) -> list[str]:
    """Wrap the target Linears in IA3Linear (default: peft's targets for the model), freeze everything
    but the scales and the task head; return the wrapped names."""
    if target_modules is None:
        target_modules, default_ff = ia3_targets(model)
        feedforward_modules = default_ff if feedforward_modules is None else feedforward_modules
    feedforward_modules = list(feedforward_modules or [])
    heads = head_modules(model, head, "apply_ia3")
    names = target_linears(model, list(target_modules), heads, "apply_ia3")
    model.requires_grad_(False)
    for name in names:
        feedforward = matches(name, feedforward_modules)
        replace_module(model, name, lambda linear, feedforward=feedforward: IA3Linear(linear, feedforward))
    for p in head_parameters(model, heads).values():
        p.requires_grad_(True)
    model.ia3_config = IA3Config(list(target_modules), feedforward_modules, heads)
    return names


def ia3_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter: every ia3_l, then the head, by state-dict name."""
    params = {f"{name}.ia3_l": m.ia3_l for name, m in model.named_modules() if isinstance(m, IA3Linear)}
    params.update(head_parameters(model, model.ia3_config.head))
    return params


def merge_ia3(model: nn.Module) -> list[str]:
    """Fold every scale into its Linear (a plain checkpoint again); return the merged names."""
    names = [name for name, m in model.named_modules() if isinstance(m, IA3Linear)]
    if not names:
        raise ValueError(f"merge_ia3: {type(model).__name__} has no (IA)^3 layers to merge")
    for name in names:
        replace_module(model, name, lambda layer: layer.to_linear())
    del model.ia3_config
    return names
