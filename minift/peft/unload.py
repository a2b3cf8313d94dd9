"""What every PEFT method answers the same way: which method a model carries, its adapter's parameters,
merging it into the weights, and unloading it (the base model back, to switch to another adapter).

Lesson: `lessons/36-peft-methods.md` (section "Merge, unload, switch").

Merging is defined where the method is linear in the weights: LoRA and DoRA (W0 + s B A, rescaled by
DoRA's magnitude) and (IA)^3 (a diagonal scale). Prompt and prefix tuning add inputs, adapters add a
non-linear function: they are unloaded (removed), never merged.
"""

from __future__ import annotations

from torch import nn

from minift.peft.adapters import AdapterLinear, adapter_parameters
from minift.peft.ia3 import IA3Linear, ia3_parameters, merge_ia3
from minift.peft.lora import LoRALinear, lora_parameters, merge_lora
from minift.peft.prefix import prefix_parameters
from minift.peft.prompt_tuning import prompt_parameters
from minift.peft.trainable import base_model, replace_module

METHODS = ("lora", "dora", "ia3", "prompt", "prefix", "adapter")
MERGEABLE = ("lora", "dora", "ia3")


def active_method(model: nn.Module) -> str | None:
    """The PEFT method the model carries (one of METHODS), or None."""
    lora = getattr(model, "lora_config", None)
    if lora is not None:
        return "dora" if lora.use_dora else "lora"
    for attribute, method in (("ia3_config", "ia3"), ("prompt_config", "prompt"), ("prefix_config", "prefix"),
                              ("adapter_config", "adapter")):
        if getattr(model, attribute, None) is not None:
            return method
    return None


def method_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter of whichever method the model carries, then its task head, by state-dict name."""
    method = active_method(model)
    if method is None:
        raise ValueError(f"{type(model).__name__} carries no PEFT adapter")
    return {"lora": lora_parameters, "dora": lora_parameters, "ia3": ia3_parameters, "prompt": prompt_parameters,
            "prefix": prefix_parameters, "adapter": adapter_parameters}[method](model)


def merge_and_unload(model: nn.Module) -> str:
    """Fold a LoRA, DoRA or (IA)^3 adapter into the weights: a plain model in the public layout again.
    Returns the method; an error for the methods that cannot merge."""
    method = active_method(model)
    if method not in MERGEABLE:
        raise ValueError(f"merge: {method or 'no adapter'} cannot be merged into the weights (only "
                         f"{', '.join(MERGEABLE)}); use unload(model) to remove it")
    (merge_lora if method in ("lora", "dora") else merge_ia3)(model)
    return method


def unload(model: nn.Module) -> str | None:
    """Remove the adapter without merging it: every wrapped Linear back to the Linear it wrapped (its
    weight untouched), the prompt or prefix removed. The task head keeps its trained values (it is part
    of the adapter files and is overwritten by the next load). Returns the method removed, or None."""
    method = active_method(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, (LoRALinear, IA3Linear, AdapterLinear)):
            if isinstance(module, LoRALinear) and module.merged:
                module.unmerge()
            replace_module(model, name, _plain)
    base = base_model(model)
    if getattr(base, "prompt_encoder", None) is not None:
        base.prompt_encoder = None
    if getattr(base, "prefix_encoder", None) is not None:
        base.prefix_encoder = None
    for attribute in ("lora_config", "ia3_config", "prompt_config", "prefix_config", "adapter_config"):
        if hasattr(model, attribute):
            delattr(model, attribute)
    return method


def _plain(module: nn.Module) -> nn.Linear:
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
    linear.weight = module.weight
    if module.bias is not None:
        linear.bias = module.bias
    return linear
