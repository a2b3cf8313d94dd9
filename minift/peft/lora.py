"""LoRA, written by hand: a frozen weight plus a trainable low-rank update.

Lesson: `lessons/19-lora-and-freezing.md` (sections "LoRA: the low-rank arithmetic" and "Merging").

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", sec. 4.1, eq. 3) keeps a
pretrained weight W0 (d_out x d_in) frozen and learns a low-rank update:

    h = W0 x + b + (alpha / r) B A x,    A: (r, d_in) random,  B: (d_out, r) zero,  r << min(d_in, d_out)

B = 0 at the start, so the wrapped model computes exactly what the pretrained one did. Training
updates r (d_in + d_out) numbers per wrapped matrix instead of d_in d_out. After training,
W0 + (alpha / r) B A is one matrix again (`merge_lora`, sec. 4.2), and the model saves as a plain
checkpoint. Which modules are wrapped and which head trains beside them: minift/peft/trainable.py;
saving the adapter on its own: minift/peft/files.py.

rsLoRA (Kalajdzievski 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", eq. 4 and
theorem 3.2) scales by alpha / sqrt(r) instead: with alpha / r the update's size shrinks as r grows, so a
larger rank learns more slowly and stops paying off. `use_rslora=True` changes only `scaling`. DoRA (Liu et
al. 2024), which also learns a magnitude per output, is `DoRALinear` below.

Leaves out: LoRA on embeddings and convolutions (nn.Linear only), and several adapters active at once
(one base model can switch between saved adapters: minift/peft/setup.py's `unload`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minift.models.config import is_int, is_number
from minift.peft.trainable import check_targets, head_modules, head_parameters, replace_module, target_linears

DEFAULT_LORA_ALPHA = 16.0
DEFAULT_LORA_DROPOUT = 0.0
DEFAULT_LORA_TARGETS = ("query", "value")  # the paper's choice for attention (Hu et al. 2021, sec. 7.1)


def check_lora_args(r: int, alpha: float, dropout: float,
                    names: tuple[str, str, str] = ("the rank r", "alpha", "dropout")) -> None:
    """`names` is how the error calls r, alpha and dropout (setup_peft names the CLI flags too)."""
    if not is_int(r) or r <= 0:
        raise ValueError(f"LoRA: {names[0]} must be a positive integer, got {r!r}")
    if not is_number(alpha) or not 0 < alpha < math.inf:
        raise ValueError(f"LoRA: {names[1]} must be a positive number, got {alpha!r}")
    if not is_number(dropout) or not 0 <= dropout < 1:
        raise ValueError(f"LoRA: {names[2]} must be a probability in [0, 1), got {dropout!r}")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (Hu et al. 2021, eq. 3):

        y = x W0^T + b + (alpha / r) * dropout(x) A^T B^T        A: (r, d_in),  B: (d_out, r)

    `weight` and `bias` are the wrapped Linear's own Parameters under the same names, so the state dict
    keeps the checkpoint's names and adds only `lora_A` and `lora_B`.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False) -> None:
        check_lora_args(r, alpha, dropout)
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha = r, alpha
        # alpha / r: the paper's scaling (sec. 4.1). With it, changing r does not change the size of the
        # initial updates much, so the learning rate tuned for one r carries over to another.
        # rsLoRA (Kalajdzievski 2023, eq. 4): alpha / sqrt(r) keeps the update's size independent of r.
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.use_rslora = use_rslora
        self.register_parameter("weight", base.weight)  # the same tensors, not copies
        self.register_parameter("bias", base.bias)  # None when the Linear has no bias
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **like))  # (r, d_in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **like))  # (d_out, r): B = 0, so BA = 0
        # A random (the paper: Gaussian; here nn.Linear's own Kaiming-uniform init, bound 1/sqrt(d_in),
        # as Microsoft's reference loralib does): A must not be 0 too, or B's gradient (which is
        # proportional to A x) would be 0 and nothing would ever train.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # (..., d_out): W0 x + b (W0 + s BA once merged)
        if self.merged:
            if self.training and torch.is_grad_enabled():
                raise RuntimeError("LoRALinear is merged: lora_A and lora_B get no gradient in this state, "
                                   "and a later unmerge() would subtract an update that changed; call "
                                   "unmerge() before training")
            return y
        # B (A x): r (d_in + d_out) multiply-adds per token, never the d_out x d_in product BA.
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., r) -> (..., d_out)
        return y + self.scaling * update

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) B A, the (d_out, d_in) update to W0 that the two factors stand for."""
        return self.scaling * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W0 + (alpha / r) B A in place: one matmul per token again, the same function."""
        if self.merged:
            raise RuntimeError("LoRALinear.merge(): already merged; merging twice would add BA twice")
        self.weight.add_(self.delta_weight().to(self.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - (alpha / r) B A: back to W0 (up to rounding: (W0 + D) - D need not be W0 exactly)."""
        if not self.merged:
            raise RuntimeError("LoRALinear.unmerge(): not merged")
        self.weight.sub_(self.delta_weight().to(self.weight.dtype))
        self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear holding W0 + (alpha / r) B A (merging first if needed) and the bias."""
        if not self.merged:
            self.merge()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.train(self.training)
        linear.weight = self.weight  # the merged Parameter itself; the meta placeholders are dropped
        if self.bias is not None:
            linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha}, merged={self.merged}")


class DoRALinear(LoRALinear):
    """DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", sec. 4.1, eq. 5): the
    weight split into a magnitude per output row and a direction; LoRA adapts the direction, the
    magnitude m (d_out,) is learned on its own:

        W' = m * (W0 + s B A) / ||W0 + s B A||_row        (s = alpha / r, or alpha / sqrt(r) with rsLoRA)

    m starts as ||W0||_row, so at B = 0 the layer is W0 again. The norm is treated as a constant in the
    backward (sec. 4.3: "we propose to treat ||V + dV||_c as a constant", which saves the memory of its
    graph); peft does the same. With x' = dropout(x), as peft computes it:

        y = W0 x + b + (m / norm - 1) W0 x' + (m / norm) s B A x'

    which is W' x + b when there is no dropout. Merged, W' is one matrix again (`merge`).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False) -> None:
        super().__init__(base, r, alpha, dropout, use_rslora)
        self.magnitude = nn.Parameter(self.weight_norm())  # (d_out,) = ||W0||_row, since B = 0

    @torch.no_grad()
    def weight_norm(self) -> torch.Tensor:
        """||W0 + s B A|| per output row (d_out,), without a gradient (sec. 4.3)."""
        return torch.linalg.norm(self.weight + self.delta_weight(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return super().forward(x)
        y = F.linear(x, self.weight, self.bias)  # (..., d_out): W0 x + b
        dropped = self.dropout(x)
        scale = self.magnitude / self.weight_norm()  # (d_out,): m / ||W0 + s B A||
        lora = F.linear(F.linear(dropped, self.lora_A), self.lora_B)  # B A x'
        return y + (scale - 1) * F.linear(dropped, self.weight) + scale * self.scaling * lora

    @torch.no_grad()
    def merge(self) -> None:
        """W <- m (W0 + s B A) / ||W0 + s B A||_row in place; unmerge divides the same row scale out."""
        if self.merged:
            raise RuntimeError("DoRALinear.merge(): already merged")
        self._row_scale = (self.magnitude / self.weight_norm())[:, None]  # (d_out, 1)
        self.weight.add_(self.delta_weight().to(self.weight.dtype)).mul_(self._row_scale)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            raise RuntimeError("DoRALinear.unmerge(): not merged")
        self.weight.div_(self._row_scale).sub_(self.delta_weight().to(self.weight.dtype))
        self.merged = False


@dataclass
class LoRAConfig:
    """What apply_lora did; saved as adapter_config.json next to the adapter tensors."""

    r: int
    alpha: float
    dropout: float
    target_modules: list[str]
    head: list[str]  # modules trained in full and saved with the adapter
    use_rslora: bool = False  # scaling alpha / sqrt(r) (Kalajdzievski 2023)
    use_dora: bool = False  # DoRALinear: a learned magnitude per output (Liu et al. 2024)

    def to_dict(self) -> dict:
        """The fields; the variants only when on, so a plain LoRA adapter's file is what it always was."""
        config = dataclasses.asdict(self)
        for variant in ("use_rslora", "use_dora"):
            if not config[variant]:
                del config[variant]
        return config


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = DEFAULT_LORA_ALPHA,
    dropout: float = DEFAULT_LORA_DROPOUT,
    target_modules: str | Sequence[str] = DEFAULT_LORA_TARGETS,
    head: str | Sequence[str] | None = None,
    use_rslora: bool = False,
    use_dora: bool = False,
) -> list[str]:
    """Wrap every nn.Linear whose name ends with one of `target_modules` in a LoRALinear (a DoRALinear
    with `use_dora`), freeze all other parameters except the task head, and return the wrapped names.

    A target matches whole name components: "query" matches "bert.encoder.layer.0.attention.self.query",
    "output.dense" matches both "attention.output.dense" and "output.dense"; one string may hold several,
    separated by commas. `head` lists the modules trained in full (default: the model's children named
    in HEAD_MODULES); a head parameter tied to one outside the head (an LM decoder tied to the
    embeddings) stays frozen. Everything is checked before the model changes.
    """
    check_lora_args(r, alpha, dropout)
    targets = check_targets(target_modules, "LoRA")
    refuse_lora_layers(model, "apply_lora")
    heads = head_modules(model, head, "apply_lora")
    names = target_linears(model, targets, heads, "apply_lora")
    layer = DoRALinear if use_dora else LoRALinear
    model.requires_grad_(False)
    for name in names:
        replace_module(model, name, lambda linear: layer(linear, r, alpha, dropout, use_rslora))  # new A, B
    for p in head_parameters(model, heads).values():
        p.requires_grad_(True)
    model.lora_config = LoRAConfig(r=r, alpha=alpha, dropout=dropout, target_modules=targets, head=heads,
                                   use_rslora=use_rslora, use_dora=use_dora)
    return names


def lora_layers(model: nn.Module) -> list[str]:
    """Names of the model's LoRALinear modules."""
    return [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]


def refuse_lora_layers(model: nn.Module, where: str) -> None:
    """An error when the model already has LoRA layers: a second apply_lora would wrap the wrappers,
    and a freezing strategy would unfreeze the weights under them."""
    wrapped = lora_layers(model)
    if wrapped:
        raise ValueError(f"{where}: {type(model).__name__} already has LoRA layers ({wrapped[0]}, ...); "
                         "start from a model without adapters, or merge_lora(model) first")


def lora_config(model: nn.Module) -> LoRAConfig:
    """The LoRAConfig apply_lora left on the model, or an error saying how to get one."""
    config = getattr(model, "lora_config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no LoRA adapter: call apply_lora(model, ...) first "
                         "(merge_lora folds the adapter into the weights: save_adapter before merging)")
    return config


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter: every lora_A / lora_B (and DoRA's magnitude), then the head parameters, by their
    state-dict names."""
    config = lora_config(model)
    params = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            params[f"{name}.lora_A"], params[f"{name}.lora_B"] = module.lora_A, module.lora_B
            if hasattr(module, "magnitude"):
                params[f"{name}.magnitude"] = module.magnitude
    params.update(head_parameters(model, config.head))
    return params


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors (LoRA factors + task head), detached: what save_adapter writes."""
    return {name: p.detach() for name, p in lora_parameters(model).items()}


def merge_lora(model: nn.Module) -> list[str]:
    """Fold every LoRALinear into a plain nn.Linear holding W0 + (alpha / r) B A; return their names.

    Afterwards the model has the public checkpoint's modules and names again, so `save_pretrained`
    writes a checkpoint `transformers` loads. The merged weights stay frozen as they were.
    """
    names = lora_layers(model)
    if not names:
        raise ValueError(f"merge_lora: {type(model).__name__} has no LoRA layers to merge")
    for name in names:
        replace_module(model, name, lambda lora: lora.to_linear())
    if hasattr(model, "lora_config"):
        del model.lora_config
    return names
