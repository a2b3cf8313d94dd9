"""Bottleneck adapters, written by hand: a small residual MLP after a sublayer (Houlsby) or after the
feed-forward only (Pfeiffer).

Lesson: `lessons/36-peft-methods.md` (section "Bottleneck adapters").

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", sec. 2.1 and fig. 2: after the
output projection of the attention and of the feed-forward sublayer, before the residual sum,

    h <- h + W_up f(W_down h),       W_down: (C / R, C),  W_up: (C, C / R)

with R the reduction factor (`--adapter-reduction`): 2 (2 C^2 / R + C / R + C) numbers per layer.
Pfeiffer et al. 2021, "AdapterFusion", sec. 4 / appendix: one adapter per layer, after the feed-forward
only -- half the parameters, about the same accuracy. W_up starts at zero (here, exactly; Houlsby's
"near-identity initialisation"), so the adapted model starts as the pretrained one.

Unlike LoRA and (IA)^3, the adapter is non-linear: it does not fold into a weight matrix, so the run
keeps the base model and the adapter apart (no merge) and every forward pays for it.

Where: `AdapterLinear` wraps the output projection itself (BERT's attention.output.dense and output.dense,
GPT-2's attn.c_proj and mlp.c_proj): adapter(dense(x)). Applied before the sublayer's dropout, where
adapter-hub applies it after; the same in evaluation.

File layout (not in `peft`; adapter-hub's inner names): `adapter_config.json` holds {"method":
"bottleneck", "kind", "reduction_factor", "non_linearity", "mh_adapter", "output_adapter",
"target_modules", "head", "model_type", "base_model"}; `adapter_model.safetensors` the tensors by
minift's names, `<wrapped module>.adapter.adapter_down.0.weight|bias` and `...adapter.adapter_up.weight|bias`,
and the head's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minift.peft.trainable import head_modules, head_parameters, inside, replace_module

ADAPTER_KINDS = ("houlsby", "pfeiffer")
DEFAULT_REDUCTION = 16
# adapter-hub's defaults: swish for Houlsby's config, ReLU for Pfeiffer's.
NON_LINEARITY = {"houlsby": "swish", "pfeiffer": "relu"}
ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU}

# model_type -> (the attention's output projection, the feed-forward's), as regexes on module names.
# RoBERTa has BERT's module names.
_BERT_SITES = (r"\.attention\.output\.dense$", r"layer\.\d+\.output\.dense$")
ADAPTER_SITES: dict[str, tuple[str, str]] = {
    "bert": _BERT_SITES,
    "roberta": _BERT_SITES,
    "gpt2": (r"\.attn\.c_proj$", r"\.mlp\.c_proj$"),
}


class BottleneckAdapter(nn.Module):
    """h + W_up f(W_down h), W_up zero at the start (Houlsby et al. 2019, fig. 2)."""

    def __init__(self, dim: int, reduction: int, non_linearity: str) -> None:
        super().__init__()
        bottleneck = max(1, dim // reduction)
        self.adapter_down = nn.Sequential(nn.Linear(dim, bottleneck), ACTIVATIONS[non_linearity]())
        self.adapter_up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.adapter_up(self.adapter_down(h))


class AdapterLinear(nn.Module):
    """A frozen nn.Linear followed by a bottleneck adapter; `weight` and `bias` are the Linear's own."""

    def __init__(self, base: nn.Linear, reduction: int, non_linearity: str) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.register_parameter("weight", base.weight)
        self.register_parameter("bias", base.bias)
        self.adapter = BottleneckAdapter(self.out_features, reduction, non_linearity).to(base.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(F.linear(x, self.weight, self.bias))

    def to_linear(self) -> nn.Linear:
        """The plain Linear without the adapter (unloading, not merging: the adapter is dropped)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        if self.bias is not None:
            linear.bias = self.bias
        return linear.train(self.training)


@dataclass
class AdapterConfig:
    kind: str
    reduction_factor: int
    non_linearity: str
    target_modules: list[str]
    head: list[str]

    def to_dict(self) -> dict:
        return {"method": "bottleneck", "kind": self.kind, "reduction_factor": self.reduction_factor,
                "non_linearity": self.non_linearity, "mh_adapter": self.kind == "houlsby", "output_adapter": True,
                "target_modules": self.target_modules, "head": self.head}


def check_adapter_args(kind: str, reduction: int) -> None:
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"adapters: kind must be one of {', '.join(ADAPTER_KINDS)}, got {kind!r}")
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"adapters: the reduction factor must be a positive integer, got {reduction!r}")


def adapter_sites(model: nn.Module, kind: str) -> list[str]:
    """The output projections that get an adapter: both sublayers' (Houlsby) or the feed-forward's (Pfeiffer)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTER_SITES:
        raise ValueError(f"adapters: no adapter sites for model_type {model_type!r} (known: {', '.join(ADAPTER_SITES)})")
    attention, feedforward = ADAPTER_SITES[model_type]
    patterns = [attention, feedforward] if kind == "houlsby" else [feedforward]
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(re.search(p, name) for p in patterns)]


def apply_adapters(model: nn.Module, kind: str = "houlsby", reduction: int = DEFAULT_REDUCTION,
                   head=None, target_modules: list[str] | None = None) -> list[str]:
    """Wrap the sites in AdapterLinear, freeze everything but the adapters and the task head, and return
    the wrapped names. (Houlsby et al. also train the LayerNorms, sec. 2.1; here they stay frozen, as in
    adapter-hub's default, so the adapter file is the whole difference from the base model.)"""
    check_adapter_args(kind, reduction)
    heads = head_modules(model, head, "apply_adapters")
    names = target_modules if target_modules is not None else adapter_sites(model, kind)
    names = [n for n in names if not inside(n, heads)]
    if not names:
        raise ValueError(f"adapters: no module of {type(model).__name__} to put an adapter after")
    model.requires_grad_(False)
    for name in names:
        replace_module(model, name, lambda linear: AdapterLinear(linear, reduction, NON_LINEARITY[kind]))
    for p in head_parameters(model, heads).values():
        p.requires_grad_(True)
    model.adapter_config = AdapterConfig(kind, reduction, NON_LINEARITY[kind], names, heads)
    return names


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter: every bottleneck's tensors, then the head, by state-dict name."""
    params = {f"{name}.adapter.{sub}": p for name, m in model.named_modules() if isinstance(m, AdapterLinear)
              for sub, p in m.adapter.named_parameters()}
    params.update(head_parameters(model, model.adapter_config.head))
    return params
