"""`setup_peft`: the one call `minift finetune` makes with its --freeze / --peft / method flags.

Lesson: `lessons/19-lora-and-freezing.md` (section "Which layers to train: measured") and
`lessons/36-peft-methods.md` (every method side by side).

It checks the flags together, before the model changes -- each with the one check its method uses
(`check_strategy` in freezing.py, `check_lora_args` in lora.py, `check_targets` in trainable.py, ...),
told to name the keyword and its flag -- then applies one method and returns the line a run prints.

`--peft` picks the method: lora, dora, ia3, prompt, prefix or adapter (`--lora-r R` alone still means
LoRA). `METHOD_OPTIONS` says which flags belong to which method: a flag of another method is an error,
not silently ignored (`check_method_options`, which minift/train/config.py calls too).

Leaves out: combining methods. A freezing strategy and a PEFT method both decide `requires_grad`, so
the second would undo the first.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

# The module, not the function: setup_peft's keyword `freeze` (the flag's name) hides the name `freeze`.
from minift.peft import freezing
from minift.peft.adapters import DEFAULT_REDUCTION, apply_adapters, check_adapter_args
from minift.peft.ia3 import apply_ia3
from minift.peft.lora import (
    DEFAULT_LORA_ALPHA,
    DEFAULT_LORA_DROPOUT,
    DEFAULT_LORA_TARGETS,
    apply_lora,
    check_lora_args,
    refuse_lora_layers,
)
from minift.peft.prefix import apply_prefix_tuning
from minift.peft.prompt_tuning import apply_prompt_tuning, check_prompt_args
from minift.peft.trainable import check_targets, trainable_summary
from minift.peft.unload import METHODS, active_method

# How the errors name each argument: the keyword and the `minift finetune` flag, since most users meet
# them as `minift finetune: error: ...`.
FREEZE_NAMES = ("freeze (--freeze)", "freeze_n (--freeze-n)")
LORA_NAMES = ("lora_r (--lora-r), the rank,", "lora_alpha (--lora-alpha)", "lora_dropout (--lora-dropout)")
TARGETS_NAME = "lora_targets (--lora-targets)"

DEFAULT_LORA_R = 8  # --peft lora|dora without --lora-r (peft's default rank)
DEFAULT_VIRTUAL_TOKENS = 20  # --peft prompt|prefix without --num-virtual-tokens

# Which options belong to which method (the flag is the name with dashes).
METHOD_OPTIONS = {
    "lora_r": ("lora", "dora"),
    "lora_alpha": ("lora", "dora"),
    "lora_dropout": ("lora", "dora"),
    "lora_targets": ("lora", "dora"),
    "use_rslora": ("lora", "dora"),
    "num_virtual_tokens": ("prompt", "prefix"),
    "prompt_init": ("prompt",),
    "prompt_init_text": ("prompt",),
    "prefix_projection": ("prefix",),
    "adapter_reduction": ("adapter",),
    "adapter_kind": ("adapter",),
}


def method_of(peft: str | None, lora_r: int | None) -> str | None:
    """The method a run uses: --peft, or LoRA when only --lora-r is given, or None (full fine-tuning
    or a freezing strategy)."""
    if peft is None:
        return "lora" if lora_r is not None else None
    if peft not in METHODS:
        raise ValueError(f"unknown --peft {peft!r}; choose one of {', '.join(METHODS)}")
    return peft


def check_method_options(method: str | None, given: Sequence[str]) -> None:
    """`given`: the option names set to something other than their defaults. An option of another
    method is an error: ignoring it would train something else than the user thinks."""
    flags = {name: "--" + name.replace("_", "-") for name in given}
    lora_only = [flags[name] for name in given if METHOD_OPTIONS[name][0] == "lora"]
    if method is None and lora_only and len(lora_only) == len(given):  # ignoring them would train the whole model
        raise ValueError(f"{', '.join(lora_only)} given without --lora-r R (lora_r): the LoRA options take effect "
                         "only when --lora-r turns LoRA on")
    for name in given:
        users = METHOD_OPTIONS[name]
        if method not in users:
            now = f"--peft {method}" if method else "no --peft method"
            raise ValueError(f"{flags[name]} is an option of --peft {'/'.join(users)}, not of {now}")


def setup_peft(
    model: nn.Module,
    *,
    freeze: str = "none",
    freeze_n: int | None = None,
    peft: str | None = None,
    lora_r: int | None = None,
    lora_alpha: float = DEFAULT_LORA_ALPHA,
    lora_dropout: float = DEFAULT_LORA_DROPOUT,
    lora_targets: str | Sequence[str] = DEFAULT_LORA_TARGETS,
    use_rslora: bool = False,
    num_virtual_tokens: int | None = None,
    prompt_init: str | None = None,
    prompt_init_text: str | None = None,
    prefix_projection: bool = False,
    adapter_reduction: int | None = None,
    adapter_kind: str | None = None,
    tokenizer=None,
) -> str:
    """Decide which parameters train, as `minift finetune`'s flags say; return `trainable_summary(model)`.

    Either a freezing strategy (`--freeze`, with `--freeze-n` for first-n) or one PEFT method (`--peft`,
    or `--lora-r R` for LoRA), not both: every method already freezes the pretrained weights and trains
    only its own parameters and the task head. `lora_targets` may also be one comma-separated string
    ("query,value"), as the flag is typed. `tokenizer` is needed by `prompt_init="text"`. All arguments
    are checked before the model changes, so an error leaves it as it was. Call it after building the
    model and before making the optimizer: the methods add new parameters.
    """
    freezing.check_strategy(freeze, freeze_n, FREEZE_NAMES)
    method = method_of(peft, lora_r)
    options = {"lora_r": lora_r is not None, "lora_alpha": lora_alpha != DEFAULT_LORA_ALPHA,
               "lora_dropout": lora_dropout != DEFAULT_LORA_DROPOUT,
               "lora_targets": not _is_default_targets(lora_targets), "use_rslora": bool(use_rslora),
               "num_virtual_tokens": num_virtual_tokens is not None, "prompt_init": prompt_init is not None,
               "prompt_init_text": prompt_init_text is not None, "prefix_projection": bool(prefix_projection),
               "adapter_reduction": adapter_reduction is not None, "adapter_kind": adapter_kind is not None}
    check_method_options(method, [name for name, given in options.items() if given])
    if method is not None and freeze != "none":
        which = f"--peft {method}" if peft is not None else f"--lora-r {lora_r}"
        what = "LoRA" if method == "lora" else "the method"
        raise ValueError(f"{which} cannot be combined with --freeze {freeze}: {what} already freezes every "
                         "pretrained weight and trains only its own parameters and the task head; drop one")
    if method in ("lora", "dora"):
        lora_r = DEFAULT_LORA_R if lora_r is None else lora_r
        check_lora_args(lora_r, lora_alpha, lora_dropout, LORA_NAMES)
        lora_targets = check_targets(lora_targets, "LoRA", TARGETS_NAME)
    n = DEFAULT_VIRTUAL_TOKENS if num_virtual_tokens is None else num_virtual_tokens
    if method == "prompt":
        check_prompt_args(n, prompt_init or "random", prompt_init_text)
    if method == "adapter":
        check_adapter_args(adapter_kind or "houlsby", DEFAULT_REDUCTION if adapter_reduction is None
                           else adapter_reduction)
    # A strategy would unfreeze the weights under existing adapters; apply_lora would refuse them too.
    refuse_lora_layers(model, "setup_peft")
    if active_method(model) is not None:
        raise ValueError(f"setup_peft: {type(model).__name__} already carries a {active_method(model)} adapter; "
                         "start from a model without adapters")
    if method is None:
        freezing.freeze(model, freeze, freeze_n)
    elif method in ("lora", "dora"):
        apply_lora(model, lora_r, lora_alpha, lora_dropout, lora_targets, use_rslora=use_rslora,
                   use_dora=method == "dora")
    elif method == "ia3":
        apply_ia3(model)
    elif method == "prompt":
        apply_prompt_tuning(model, n, prompt_init or "random", prompt_init_text, tokenizer)
    elif method == "prefix":
        apply_prefix_tuning(model, n, prefix_projection)
    else:
        apply_adapters(model, adapter_kind or "houlsby",
                       DEFAULT_REDUCTION if adapter_reduction is None else adapter_reduction)
    return trainable_summary(model)


def _is_default_targets(targets: str | Sequence[str]) -> bool:
    """Is `targets` the default, as a sequence or as the flag's text "query,value"?"""
    if isinstance(targets, str):
        return targets == ",".join(DEFAULT_LORA_TARGETS)
    return list(targets) == list(DEFAULT_LORA_TARGETS)

