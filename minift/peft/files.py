"""The adapter on its own: `adapter_model.safetensors` (the LoRA factors and the task head) and
`adapter_config.json` (what apply_lora did), a few hundred KB instead of the whole model.

Lesson: `lessons/19-lora-and-freezing.md` (section "Verify": the adapter alone restores the model).

`save_adapter` writes both files atomically through minift/io.py (temporary file, fsync, rename);
`load_adapter` puts them back on the base model they were trained from, checking the config and every
tensor first, so that a failed load leaves the model as it was.

Leaves out: the peft library's layout (`base_model.model.` name prefixes, `lora_A.weight` names,
`peft_type` and `modules_to_save` in the config); the files are minift's own names for now.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from minift.checkpoint import load_state_dict, write_safetensors
from minift.io import read_json, write_json
from minift.peft.lora import (
    LoRAConfig,
    apply_lora,
    check_lora_args,
    lora_config,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def save_adapter(model: nn.Module, folder: str | Path, *, base_model: str | None = None) -> list[Path]:
    """Write only the adapter: `adapter_model.safetensors` (LoRA factors + head) and
    `adapter_config.json` (r, alpha, dropout, target_modules, head, model_type, base_model).

    A few hundred KB instead of the whole model; `load_adapter` puts it back on the base model.
    Both writes are atomic (temporary file, fsync, rename), through minift/io.py.
    """
    tensors = {name: t.contiguous().cpu() for name, t in lora_state_dict(model).items()}
    config = {**lora_config(model).to_dict(), "model_type": _model_type(model), "base_model": base_model}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, folder / ADAPTER_WEIGHTS)
    write_json(config, folder / ADAPTER_CONFIG)
    return [folder / ADAPTER_WEIGHTS, folder / ADAPTER_CONFIG]


def read_adapter_config(path: Path) -> tuple[LoRAConfig, str | None]:
    """The LoRAConfig and the model_type saved in adapter_config.json; errors name the file."""
    raw = read_json(path)  # a syntax error names the file, line and column
    fields = [f.name for f in dataclasses.fields(LoRAConfig)]
    required = [f.name for f in dataclasses.fields(LoRAConfig) if f.default is dataclasses.MISSING]
    missing = required if not isinstance(raw, dict) else [k for k in required if k not in raw]
    if missing:
        raise ValueError(f"{path}: not a minift adapter config; missing key(s) {', '.join(missing)}")
    try:
        config = LoRAConfig(**{k: raw[k] for k in fields if k in raw})
        check_lora_args(config.r, config.alpha, config.dropout)
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
    config, saved_type = read_adapter_config(folder / ADAPTER_CONFIG)
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
        apply_lora(model, config.r, config.alpha, config.dropout, config.target_modules, config.head,
                   use_rslora=config.use_rslora, use_dora=config.use_dora)
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
    """The adapter must match the model's adapter exactly: no name map, no new-head allowance (what
    minift/checkpoint/load.py's LoadReport does for whole checkpoints)."""
    problems = [f"missing from the adapter: {name}" for name in params if name not in tensors]
    problems += [f"unexpected in the adapter (the model has no such tensor): {name}"
                 for name in tensors if name not in params]
    problems += [f"shape mismatch for {name}: adapter {list(tensors[name].shape)}, model {list(p.shape)}"
                 for name, p in params.items() if name in tensors and tensors[name].shape != p.shape]
    return problems
