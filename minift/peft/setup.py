"""`setup_peft`: the one call `minift finetune` makes with its --freeze / --lora-* flags.

Lesson: `lessons/19-lora-and-freezing.md` (section "Which layers to train: measured").

It checks the flags together, before the model changes -- each with the one check its method uses
(`check_strategy` in freezing.py, `check_lora_args` in lora.py, `check_targets` in trainable.py), told
to name the keyword and its flag -- then applies one method and returns the line a run prints.

Leaves out: combining methods. A freezing strategy and LoRA both decide `requires_grad`, so the
second would undo the first; a new method (IA3, prompt tuning, ...) is one more branch here.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

# The module, not the function: setup_peft's keyword `freeze` (the flag's name) hides the name `freeze`.
from minift.peft import freezing
from minift.peft.lora import (
    DEFAULT_LORA_ALPHA,
    DEFAULT_LORA_DROPOUT,
    DEFAULT_LORA_TARGETS,
    apply_lora,
    check_lora_args,
    refuse_lora_layers,
)
from minift.peft.trainable import check_targets, trainable_summary

# How the errors name each argument: the keyword and the `minift finetune` flag, since most users meet
# them as `minift finetune: error: ...`.
FREEZE_NAMES = ("freeze (--freeze)", "freeze_n (--freeze-n)")
LORA_NAMES = ("lora_r (--lora-r), the rank,", "lora_alpha (--lora-alpha)", "lora_dropout (--lora-dropout)")
TARGETS_NAME = "lora_targets (--lora-targets)"


def setup_peft(
    model: nn.Module,
    *,
    freeze: str = "none",
    freeze_n: int | None = None,
    lora_r: int | None = None,
    lora_alpha: float = DEFAULT_LORA_ALPHA,
    lora_dropout: float = DEFAULT_LORA_DROPOUT,
    lora_targets: str | Sequence[str] = DEFAULT_LORA_TARGETS,
) -> str:
    """Decide which parameters train, as `minift finetune`'s flags say; return `trainable_summary(model)`.

    Either a freezing strategy (`--freeze`, with `--freeze-n` for first-n) or LoRA (`--lora-r R` turns it
    on; `--lora-alpha`, `--lora-dropout`, `--lora-targets`), not both: LoRA already freezes every
    pretrained weight and trains only the adapters and the task head. `lora_targets` may also be one
    comma-separated string ("query,value"), as the flag is typed. All arguments are checked before the
    model changes, so an error leaves it as it was. Call it after building the model and before making
    the optimizer: LoRA adds new parameters, and the optimizer takes only the trainable ones.
    """
    freezing.check_strategy(freeze, freeze_n, FREEZE_NAMES)
    if lora_r is None:
        defaults = (("--lora-alpha", lora_alpha == DEFAULT_LORA_ALPHA),
                    ("--lora-dropout", lora_dropout == DEFAULT_LORA_DROPOUT),
                    ("--lora-targets", _is_default_targets(lora_targets)))
        given = [flag for flag, is_default in defaults if not is_default]
        if given:  # ignoring them would train the whole model while the user thinks LoRA is on
            raise ValueError(f"{', '.join(given)} given without --lora-r R (lora_r): the LoRA options "
                             "take effect only when --lora-r turns LoRA on")
    else:
        if freeze != "none":
            raise ValueError(f"--lora-r {lora_r} cannot be combined with --freeze {freeze}: LoRA already "
                             "freezes every pretrained weight and trains only the adapters and the task "
                             "head; drop one")
        check_lora_args(lora_r, lora_alpha, lora_dropout, LORA_NAMES)
        lora_targets = check_targets(lora_targets, "LoRA", TARGETS_NAME)
    # A strategy would unfreeze the weights under existing adapters; apply_lora would refuse them too.
    refuse_lora_layers(model, "setup_peft")
    if lora_r is None:
        freezing.freeze(model, freeze, freeze_n)
    else:
        apply_lora(model, lora_r, lora_alpha, lora_dropout, lora_targets)
    return trainable_summary(model)


def _is_default_targets(targets: str | Sequence[str]) -> bool:
    """Is `targets` the default, as a sequence or as the flag's text "query,value"?"""
    if isinstance(targets, str):
        return targets == ",".join(DEFAULT_LORA_TARGETS)
    return list(targets) == list(DEFAULT_LORA_TARGETS)
