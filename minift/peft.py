"""Parameter-efficient fine-tuning: freezing strategies and LoRA, written by hand.

Lesson: `lessons/41-lora-and-freezing.md` (the strategies, the low-rank arithmetic, the parameter and
optimizer-memory count for all-MiniLM-L6-v2, the merge math).

Freezing chooses which pretrained parameters receive gradients. The strategies are the ones the
transfer-learning literature compares: train the head only (feature extraction), freeze the
embeddings, freeze the lower layers and tune the upper ones (Howard & Ruder 2018, "Universal Language
Model Fine-tuning", sec. 3.2 on why lower layers hold more general features; Lee et al. 2019, "What
Would Elsa Do? Freezing Layers During Transformer Fine-Tuning", which finds that tuning only the upper
part of BERT keeps most of the quality). Where the parts of an architecture live is data (`LAYOUTS`).

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", sec. 4.1, eq. 3) keeps a
pretrained weight W0 (d_out x d_in) frozen and learns a low-rank update:

    h = W0 x + b + (alpha / r) B A x,    A: (r, d_in) random,  B: (d_out, r) zero,  r << min(d_in, d_out)

B = 0 at the start, so the wrapped model computes exactly what the pretrained one did. Training
updates r (d_in + d_out) numbers per wrapped matrix instead of d_in d_out. After training,
W0 + (alpha / r) B A is one matrix again (`merge_lora`), and the model saves as a plain checkpoint.

`setup_peft` is the one call `minift finetune` makes with its --freeze / --lora-* flags.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from minift.checkpoint import load_state_dict
from minift.io import atomic_files, read_json, write_json
from minift.models.pretrained import count_parameters

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


# ----------------------------------------------------------------------------------------------------
# Freezing
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where the parts of one architecture live, as module paths inside its base model."""

    embeddings: tuple[str, ...]  # the input embedding modules
    blocks: str  # the ModuleList of transformer blocks; block i is f"{blocks}.{i}"


# config.model_type -> layout. A new architecture is one more row, not new code. Everything else in
# the base model (BERT's pooler, GPT-2's final ln_f) sits above the blocks; the task head (classifier,
# score, cls, ...) is everything outside the base model.
LAYOUTS: dict[str, Layout] = {
    "bert": Layout(embeddings=("embeddings",), blocks="encoder.layer"),
    "gpt2": Layout(embeddings=("wte", "wpe"), blocks="h"),
}

STRATEGIES = ("none", "embeddings", "first-n", "last-block", "head-only")


def freeze(model: nn.Module, strategy: str, n: int | None = None) -> list[str]:
    """Set `requires_grad` of every parameter for `strategy`; return the frozen names (model order).

    "none": everything trains.   "embeddings": the input embeddings are frozen.
    "first-n": the embeddings and blocks 0..n-1 are frozen (0 <= n <= number of blocks).
    "last-block": only the last block, what sits above it (pooler / final norm) and the head train.
    "head-only": only the task head trains (the pretrained model is a fixed feature extractor).

    The strategy describes the whole model: parameters it does not freeze are set trainable again.
    """
    _check_strategy(strategy, n)
    parts = _parts(model)
    num_blocks = 1 + max((i for part, i in parts.values() if part == "block"), default=-1)
    if num_blocks == 0:
        model_type = _model_type(model)
        raise ValueError(f"freeze: {type(model).__name__} has no parameter under "
                         f"'{LAYOUTS[model_type].blocks}.<i>.', where LAYOUTS[{model_type!r}] says its blocks are")
    freeze_embeddings, blocks_below, freeze_top = _plan(strategy, n, num_blocks)
    frozen = [name for name, (part, i) in parts.items()
              if (part == "embeddings" and freeze_embeddings)
              or (part == "block" and i < blocks_below)
              or (part == "top" and freeze_top)]
    if len(frozen) == len(parts):
        raise ValueError(f"freeze: strategy {strategy!r} leaves {type(model).__name__} with no trainable "
                         "parameter (a base model has no task head to train)")
    frozen_set = set(frozen)
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen_set)
    return frozen


def _check_strategy(strategy: str, n: int | None) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"freeze: unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if strategy == "first-n" and (not isinstance(n, int) or isinstance(n, bool)):
        raise ValueError(f"freeze: strategy 'first-n' needs n, the number of blocks to freeze; got {n!r}")
    if strategy != "first-n" and n is not None:  # silently ignoring it would hide a typo'd strategy
        raise ValueError(f"freeze: n={n!r} is only used by strategy 'first-n', not by {strategy!r}")


def _plan(strategy: str, n: int | None, num_blocks: int) -> tuple[bool, int, bool]:
    """A strategy as (freeze the embeddings?, freeze the blocks below this index, freeze the top?)."""
    if strategy == "first-n" and not 0 <= n <= num_blocks:
        raise ValueError(f"freeze: first-n with n={n} is out of range: the model has {num_blocks} blocks, "
                         f"so n must be in [0, {num_blocks}]")
    return {
        "none": (False, 0, False),
        "embeddings": (True, 0, False),
        "first-n": (True, n, False),
        "last-block": (True, num_blocks - 1, False),
        "head-only": (True, num_blocks, True),
    }[strategy]


def _base_prefix(model: nn.Module) -> str:
    """"bert." in a head model (whose base model is the child `bert`), "" in a base model."""
    prefix = getattr(model, "base_model_prefix", "")
    return f"{prefix}." if prefix and prefix in dict(model.named_children()) else ""


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _parts(model: nn.Module) -> dict[str, tuple[str, int]]:
    """Parameter name -> (part, block index), part in "embeddings", "block", "top" (the rest of the
    base model) and "head" (outside the base model); the index is -1 outside the blocks."""
    model_type = _model_type(model)
    if model_type not in LAYOUTS:
        raise ValueError(f"{type(model).__name__} has model_type {model_type!r}, which has no layout in "
                         f"minift/peft.py LAYOUTS (known: {', '.join(LAYOUTS)})")
    layout, prefix = LAYOUTS[model_type], _base_prefix(model)
    parts = {}
    for name, _ in model.named_parameters():
        if not name.startswith(prefix):
            parts[name] = ("head", -1)
            continue
        inner = name[len(prefix):]
        if any(inner.startswith(e + ".") for e in layout.embeddings):
            parts[name] = ("embeddings", -1)
        elif inner.startswith(layout.blocks + "."):
            parts[name] = ("block", int(inner[len(layout.blocks) + 1:].split(".")[0]))
        else:
            parts[name] = ("top", -1)
    return parts


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters; a tied weight counts once."""
    return count_parameters(model, trainable_only=True), count_parameters(model)


def trainable_summary(model: nn.Module) -> str:
    """One line for the start of a run: "trainable params: 1,234 / 22,713,216 (0.01%)"."""
    trainable, total = trainable_parameters(model)
    return f"trainable params: {trainable:,} / {total:,} ({100 * trainable / max(total, 1):.2f}%)"


# ----------------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------------


def _check_lora_args(r: int, alpha: float, dropout: float,
                     names: tuple[str, str, str] = ("the rank r", "alpha", "dropout")) -> None:
    """`names` is how the error calls r, alpha and dropout (setup_peft names the CLI flags too)."""
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ValueError(f"LoRA: {names[0]} must be a positive integer, got {r!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < math.inf:
        raise ValueError(f"LoRA: {names[1]} must be a positive number, got {alpha!r}")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ValueError(f"LoRA: {names[2]} must be a probability in [0, 1), got {dropout!r}")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (Hu et al. 2021, eq. 3):

        y = x W0^T + b + (alpha / r) * dropout(x) A^T B^T        A: (r, d_in),  B: (d_out, r)

    `weight` and `bias` are the wrapped Linear's own Parameters under the same names, so the state dict
    keeps the checkpoint's names and adds only `lora_A` and `lora_B`.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        _check_lora_args(r, alpha, dropout)
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha = r, alpha
        # alpha / r: the paper's scaling (sec. 4.1). With it, changing r does not change the size of the
        # initial updates much, so the learning rate tuned for one r carries over to another.
        self.scaling = alpha / r
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


# Children of a head model that are its task head, when apply_lora is not told: trained in full next
# to the adapters (a new classifier cannot be low-rank-adapted from anything). `lm_head` is absent on
# purpose: it is tied to the input embeddings, so training it would train the whole vocabulary matrix.
HEAD_MODULES = ("classifier", "score", "cls", "qa_outputs")


@dataclass
class LoRAConfig:
    """What apply_lora did; saved as adapter_config.json next to the adapter tensors."""

    r: int
    alpha: float
    dropout: float
    target_modules: list[str]
    head: list[str]  # modules trained in full and saved with the adapter

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] = ("query", "value"),
    head: Sequence[str] | None = None,
) -> list[str]:
    """Wrap every nn.Linear whose name ends with one of `target_modules` in a LoRALinear, freeze all
    other parameters except the task head, and return the wrapped module names.

    A target matches whole name components: "query" matches "bert.encoder.layer.0.attention.self.query",
    "output.dense" matches both "attention.output.dense" and "output.dense". `head` lists the modules
    trained in full (default: the model's children named in HEAD_MODULES); a head parameter tied to
    one outside the head (an LM decoder tied to the embeddings) stays frozen.
    """
    _check_lora_args(r, alpha, dropout)
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"apply_lora: target_modules must be non-empty module names, got {target_modules!r}")
    wrapped = _lora_layers(model)
    if wrapped:
        raise ValueError(f"apply_lora: {type(model).__name__} already has LoRA layers ({wrapped[0]}, ...); "
                         "call merge_lora(model) first, or start from a fresh model")
    heads = _head_modules(model, head)
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and _matches(name, targets) and not _inside(name, heads)]
    if not names:
        raise ValueError(f"apply_lora: no nn.Linear in {type(model).__name__} has a name ending with "
                         f"{' or '.join(targets)}; {_linear_names(model)}")
    model.requires_grad_(False)
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        lora = LoRALinear(getattr(owner, child), r, alpha, dropout)  # new A and B: trainable
        lora.train(owner.training)  # new modules start in training mode; follow the model (dropout)
        setattr(owner, child, lora)
    for p in _head_parameters(model, heads).values():
        p.requires_grad_(True)
    model.lora_config = LoRAConfig(r=r, alpha=alpha, dropout=dropout, target_modules=targets, head=heads)
    return names


def _lora_layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _inside(name: str, modules: list[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _linear_names(model: nn.Module) -> str:
    """The names a target could have used, for the error message."""
    full = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not full:
        return "the model has no nn.Linear module at all"
    endings = sorted({name.rpartition(".")[2] for name in full})
    return f"its nn.Linear modules end with: {', '.join(endings)} (e.g. {full[0]})"


def _head_modules(model: nn.Module, head: Sequence[str] | None) -> list[str]:
    children = dict(model.named_children())
    if head is None:
        return [name for name in HEAD_MODULES if name in children]
    head = [head] if isinstance(head, str) else list(head)
    modules = dict(model.named_modules())
    unknown = [name for name in head if name not in modules]
    if unknown:
        raise ValueError(f"apply_lora: head module(s) {', '.join(unknown)} not found in {type(model).__name__} "
                         f"(its children: {', '.join(children)})")
    return head


def _head_parameters(model: nn.Module, heads: list[str]) -> dict[str, nn.Parameter]:
    """Parameters under the head modules, minus those shared with the rest of the model (tied)."""
    outside = {id(p) for name, p in model.named_parameters(remove_duplicate=False) if not _inside(name, heads)}
    return {name: p for name, p in model.named_parameters(remove_duplicate=False)
            if _inside(name, heads) and id(p) not in outside}


def _lora_config(model: nn.Module) -> LoRAConfig:
    config = getattr(model, "lora_config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no LoRA adapter: call apply_lora(model, ...) first "
                         "(merge_lora folds the adapter into the weights: save_adapter before merging)")
    return config


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter: every lora_A / lora_B, then the head parameters, by their state-dict names."""
    config = _lora_config(model)
    params = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            params[f"{name}.lora_A"], params[f"{name}.lora_B"] = module.lora_A, module.lora_B
    params.update(_head_parameters(model, config.head))
    return params


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors (LoRA factors + task head), detached: what save_adapter writes."""
    return {name: p.detach() for name, p in lora_parameters(model).items()}


def merge_lora(model: nn.Module) -> list[str]:
    """Fold every LoRALinear into a plain nn.Linear holding W0 + (alpha / r) B A; return their names.

    Afterwards the model has the public checkpoint's modules and names again, so `save_pretrained`
    writes a checkpoint `transformers` loads. The merged weights stay frozen as they were.
    """
    names = _lora_layers(model)
    if not names:
        raise ValueError(f"merge_lora: {type(model).__name__} has no LoRA layers to merge")
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, getattr(owner, child).to_linear())
    if hasattr(model, "lora_config"):
        del model.lora_config
    return names


# ----------------------------------------------------------------------------------------------------
# Adapter files
# ----------------------------------------------------------------------------------------------------


def save_adapter(model: nn.Module, folder: str | Path, *, base_model: str | None = None) -> list[Path]:
    """Write only the adapter: `adapter_model.safetensors` (LoRA factors + head) and
    `adapter_config.json` (r, alpha, dropout, target_modules, head, model_type, base_model).

    A few hundred KB instead of the whole model; `load_adapter` puts it back on the base model.
    Both writes are atomic (temporary file, fsync, rename), through minift/io.py.
    """
    tensors = {name: t.contiguous().cpu() for name, t in lora_state_dict(model).items()}
    config = {**_lora_config(model).to_dict(), "model_type": _model_type(model), "base_model": base_model}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_files([folder / ADAPTER_WEIGHTS]) as (tmp,):
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(config, folder / ADAPTER_CONFIG)
    return [folder / ADAPTER_WEIGHTS, folder / ADAPTER_CONFIG]


def _read_adapter_config(path: Path) -> tuple[LoRAConfig, str | None]:
    """The LoRAConfig and the model_type saved in adapter_config.json; errors name the file."""
    raw = read_json(path)  # a syntax error names the file, line and column
    fields = [f.name for f in dataclasses.fields(LoRAConfig)]
    missing = fields if not isinstance(raw, dict) else [k for k in fields if k not in raw]
    if missing:
        raise ValueError(f"{path}: not a minift adapter config; missing key(s) {', '.join(missing)}")
    try:
        config = LoRAConfig(**{k: raw[k] for k in fields})
        _check_lora_args(config.r, config.alpha, config.dropout)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return config, raw.get("model_type")


def load_adapter(model: nn.Module, folder: str | Path) -> list[str]:
    """Load an adapter written by `save_adapter` into `model` (the base model it was trained from,
    e.g. fresh from `from_pretrained`): apply LoRA as the config says unless already applied, then
    copy every adapter tensor in. Returns the loaded names.

    Every problem (missing, unexpected or mis-shaped tensor) is reported in one error, and the model
    is then left as it was: LoRA layers added by this call are folded back (B = 0, so W is unchanged).
    """
    folder = Path(folder)
    config, saved_type = _read_adapter_config(folder / ADAPTER_CONFIG)
    if saved_type is not None and saved_type != _model_type(model):
        raise ValueError(f"{folder / ADAPTER_CONFIG}: the adapter is for model_type {saved_type!r}, "
                         f"the model is {_model_type(model)!r}")
    tensors = load_state_dict(folder / ADAPTER_WEIGHTS)
    applied_here = getattr(model, "lora_config", None) is None
    if not applied_here and model.lora_config != config:
        raise ValueError(f"{folder / ADAPTER_CONFIG}: the model already has a different LoRA adapter "
                         f"({model.lora_config}) than the file ({config})")
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    if applied_here:
        apply_lora(model, config.r, config.alpha, config.dropout, config.target_modules, config.head)
    params = lora_parameters(model)
    problems = _adapter_problems(tensors, params)
    if problems:
        if applied_here:  # undo: fold the fresh B = 0 factors away and restore requires_grad
            merge_lora(model)
            for name, p in model.named_parameters():
                p.requires_grad_(trainable[name])
        raise ValueError(f"{folder / ADAPTER_WEIGHTS} does not fit {type(model).__name__}:\n  "
                         + "\n  ".join(problems))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(dtype=p.dtype))
    return list(params)


def _adapter_problems(tensors: dict[str, torch.Tensor], params: dict[str, nn.Parameter]) -> list[str]:
    problems = [f"missing from the adapter: {name}" for name in params if name not in tensors]
    problems += [f"unexpected in the adapter (the model has no such tensor): {name}"
                 for name in tensors if name not in params]
    problems += [f"shape mismatch for {name}: adapter {list(tensors[name].shape)}, model {list(p.shape)}"
                 for name, p in params.items() if name in tensors and tensors[name].shape != p.shape]
    return problems


# ----------------------------------------------------------------------------------------------------
# One call for `minift finetune`
# ----------------------------------------------------------------------------------------------------

DEFAULT_LORA_ALPHA = 16.0
DEFAULT_LORA_DROPOUT = 0.0
DEFAULT_LORA_TARGETS = ("query", "value")  # the paper's choice for attention (Hu et al. 2021, sec. 7.1)

_freeze = freeze  # inside setup_peft, its keyword `freeze` (named after the CLI flag) hides the function


def setup_peft(
    model: nn.Module,
    *,
    freeze: str = "none",
    freeze_n: int | None = None,
    lora_r: int | None = None,
    lora_alpha: float = DEFAULT_LORA_ALPHA,
    lora_dropout: float = DEFAULT_LORA_DROPOUT,
    lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS,
) -> str:
    """Decide which parameters train, as `minift finetune`'s flags say; return `trainable_summary(model)`.

    Either a freezing strategy (`--freeze`, with `--freeze-n` for first-n) or LoRA (`--lora-r R` turns it
    on; `--lora-alpha`, `--lora-dropout`, `--lora-targets`), not both: LoRA already freezes every
    pretrained weight and trains only the adapters and the task head. `lora_targets` may also be one
    comma-separated string ("query,value"), as the flag is typed. All arguments are checked before the
    model changes, so an error leaves it as it was. Call it after building the model and before making
    the optimizer: LoRA adds new parameters, and the optimizer takes only the trainable ones.
    """
    targets = _check_setup(freeze, freeze_n, lora_r, lora_alpha, lora_dropout, lora_targets)
    wrapped = _lora_layers(model)
    if wrapped:  # a strategy would unfreeze the weights under the adapters; apply_lora would refuse too
        raise ValueError(f"setup_peft: {type(model).__name__} already has LoRA layers ({wrapped[0]}, ...); "
                         "start from a model without adapters (or merge_lora(model) first)")
    if lora_r is None:
        _freeze(model, freeze, freeze_n)
    else:
        apply_lora(model, lora_r, lora_alpha, lora_dropout, targets)
    return trainable_summary(model)


def _check_setup(freeze: str, freeze_n: int | None, lora_r: int | None, lora_alpha: float,
                 lora_dropout: float, lora_targets: Sequence[str]) -> list[str]:
    """setup_peft's arguments, checked together; returns the LoRA targets as a list. Each error names the
    keyword and its flag, since most users meet it as `minift finetune: error: ...`."""
    _check_freeze_flags(freeze, freeze_n)
    targets = lora_targets.split(",") if isinstance(lora_targets, str) else list(lora_targets)
    if lora_r is None:
        given = [flag for flag, value, default in (("--lora-alpha", lora_alpha, DEFAULT_LORA_ALPHA),
                                                   ("--lora-dropout", lora_dropout, DEFAULT_LORA_DROPOUT),
                                                   ("--lora-targets", targets, list(DEFAULT_LORA_TARGETS)))
                 if value != default]
        if given:  # ignoring them would train the whole model while the user thinks LoRA is on
            raise ValueError(f"{', '.join(given)} given without --lora-r R (lora_r): the LoRA options "
                             "take effect only when --lora-r turns LoRA on")
        return targets
    if freeze != "none":
        raise ValueError(f"--lora-r {lora_r} cannot be combined with --freeze {freeze}: LoRA already freezes "
                         "every pretrained weight and trains only the adapters and the task head; drop one")
    _check_lora_args(lora_r, lora_alpha, lora_dropout, names=(
        "lora_r (--lora-r), the rank,", "lora_alpha (--lora-alpha)", "lora_dropout (--lora-dropout)"))
    targets = [t.strip() if isinstance(t, str) else t for t in targets]
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError("lora_targets (--lora-targets) must be module-name suffixes separated by commas, "
                         f"such as query,value; got {lora_targets!r}")
    return targets


def _check_freeze_flags(freeze: str, freeze_n: int | None) -> None:
    if freeze not in STRATEGIES:
        raise ValueError(f"freeze (--freeze): unknown strategy {freeze!r}; "
                         f"expected one of {', '.join(STRATEGIES)}")
    if freeze == "first-n" and freeze_n is None:
        raise ValueError("--freeze first-n needs --freeze-n N (freeze_n), the number of blocks to freeze, "
                         "counted from the embeddings up")
    if freeze != "first-n" and freeze_n is not None:  # silently ignoring it would hide a mistyped strategy
        raise ValueError(f"--freeze-n {freeze_n} (freeze_n) is only used with --freeze first-n, "
                         f"not with --freeze {freeze}")
    if freeze_n is not None and (not isinstance(freeze_n, int) or isinstance(freeze_n, bool)):
        raise ValueError(f"freeze_n (--freeze-n) must be an integer number of blocks, got {freeze_n!r}")
