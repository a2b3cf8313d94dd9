"""Adapter files in the layout of the `peft` library, written and read by hand: `adapter_config.json`
and `adapter_model.safetensors`, so that `peft.PeftModel.from_pretrained(transformers_model, folder)`
loads what minift trained, and minift loads what peft trained (`minift evaluate|predict|generate
--adapter DIR`). Bottleneck adapters, which peft does not have, keep minift's own layout
(minift/peft/adapters.py's docstring).

Lesson: `lessons/36-peft-methods.md` (section "Files").

The layout (peft 0.21, utils/save_and_load.py):

    LoRA, DoRA   base_model.model.<module>.lora_A.weight (r, d_in), ...lora_B.weight (d_out, r),
                 DoRA: ...lora_magnitude_vector (d_out,)
    (IA)^3       base_model.model.<module>.ia3_l: (d_out, 1) on an output, (1, d_in) on an input
    prompt       prompt_embeddings (n, C)
    prefix       prompt_embeddings (n, 2 L C) -- after the MLP when it was reparameterised, as peft saves
    task head    base_model.model.<head>.<param> (LoRA, IA3), base_model.<head>.<param> (prompt, prefix);
                 the config lists it in modules_to_save

<module> is the module's name in the transformers model, which is minift's (same checkpoint names). GPT-2's
projections are Conv1D in transformers ((in, out) weights, `fan_in_fan_out: true`); LoRA's factors and
the scales have the same shapes either way.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from minift.checkpoint import load_state_dict, write_safetensors
from minift.io import read_json, write_json
from minift.models import pretrained
from minift.models.architectures import architecture_of
from minift.peft.adapters import apply_adapters
from minift.peft.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from minift.peft.ia3 import apply_ia3
from minift.peft.lora import apply_lora
from minift.peft.prefix import apply_prefix_tuning, attention_shape
from minift.peft.prompt_tuning import apply_prompt_tuning
from minift.peft.trainable import base_model
from minift.peft.unload import active_method, method_parameters, unload

PEFT_TYPES = {"lora": "LORA", "dora": "LORA", "ia3": "IA3", "prompt": "PROMPT_TUNING", "prefix": "PREFIX_TUNING"}
# The architecture table's head -> peft's task_type (peft has none for a masked LM).
TASK_TYPES = {"sequence-classification": "SEQ_CLS", "token-classification": "TOKEN_CLS", "causal-lm": "CAUSAL_LM",
              "base": "FEATURE_EXTRACTION", "masked-lm": None}


def task_type(model: nn.Module) -> str | None:
    heads = architecture_of(model).heads
    return TASK_TYPES[next(name for name, cls in heads.items() if isinstance(model, cls))]


def _fan_in_fan_out(model: nn.Module) -> bool:
    """GPT-2: transformers' Conv1D layers store (in, out) weights, which peft's config records."""
    return bool(getattr(model, "_transposed_weights", ()))


def save_peft_adapter(model: nn.Module, folder: str | Path, *, base_model_name: str | None = None) -> list[Path]:
    """Write the model's adapter (and task head) in peft's layout (bottleneck adapters: minift's)."""
    method = active_method(model)
    if method is None:
        raise ValueError(f"save_peft_adapter: {type(model).__name__} carries no adapter")
    folder = Path(folder)
    if method == "adapter":
        config = {**model.adapter_config.to_dict(), "model_type": model.config.model_type,
                  "base_model": base_model_name}
        tensors = {name: p.detach() for name, p in method_parameters(model).items()}
    else:
        config, tensors = _to_peft(model, method, base_model_name)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, folder / ADAPTER_WEIGHTS)
    write_json(config, folder / ADAPTER_CONFIG)
    return [folder / ADAPTER_WEIGHTS, folder / ADAPTER_CONFIG]


def _to_peft(model: nn.Module, method: str, base_model_name: str | None) -> tuple[dict, dict]:
    config = {"peft_type": PEFT_TYPES[method], "task_type": task_type(model), "base_model_name_or_path": base_model_name,
              "inference_mode": True, "revision": None}
    tensors = {}
    if method in ("lora", "dora"):
        c = model.lora_config
        config.update(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=c.target_modules,
                      use_rslora=c.use_rslora, use_dora=c.use_dora, bias="none", init_lora_weights=True,
                      fan_in_fan_out=_fan_in_fan_out(model), modules_to_save=c.head or None)
        for name, p in method_parameters(model).items():
            module, _, leaf = name.rpartition(".")
            key = {"lora_A": f"{module}.lora_A.weight", "lora_B": f"{module}.lora_B.weight",
                   "magnitude": f"{module}.lora_magnitude_vector"}.get(leaf, name)
            tensors[f"base_model.model.{key}"] = p
        return config, tensors
    if method == "ia3":
        c = model.ia3_config
        config.update(target_modules=c.target_modules, feedforward_modules=c.feedforward_modules,
                      fan_in_fan_out=_fan_in_fan_out(model), init_ia3_weights=True, modules_to_save=c.head or None)
        for name, p in method_parameters(model).items():
            if name.endswith(".ia3_l"):
                module = model.get_submodule(name.rpartition(".")[0])
                p = p[None, :] if module.feedforward else p[:, None]  # (1, d_in) or (d_out, 1)
            tensors[f"base_model.model.{name}"] = p
        return config, tensors
    layers, heads, dim = attention_shape(model.config)
    config.update(num_virtual_tokens=None, token_dim=dim, num_transformer_submodules=1, num_attention_heads=heads,
                  num_layers=layers)
    base = base_model(model)
    if method == "prompt":
        c = model.prompt_config
        init = {"random": "RANDOM", "vocab": "SAMPLE_VOCAB", "text": "TEXT"}[c.init]
        config.update(num_virtual_tokens=c.num_virtual_tokens, prompt_tuning_init=init,
                      prompt_tuning_init_text=c.init_text,
                      tokenizer_name_or_path=base_model_name if c.init == "text" else None)
        tensors["prompt_embeddings"] = base.prompt_encoder.embedding.weight
    else:
        c = model.prefix_config
        config.update(num_virtual_tokens=c.num_virtual_tokens, encoder_hidden_size=c.encoder_hidden_size,
                      prefix_projection=c.projection)
        with torch.no_grad():
            tensors["prompt_embeddings"] = base.prefix_encoder.table()  # (n, 2 L C), as peft saves it
    head_names = c.head
    config["modules_to_save"] = head_names or None
    for name, p in method_parameters(model).items():
        if any(name == h or name.startswith(h + ".") for h in head_names):
            tensors[f"base_model.{name}"] = p
    return config, tensors


# --- loading ------------------------------------------------------------------------------------------------


def load_peft_adapter(model: nn.Module, folder: str | Path) -> str:
    """Apply the adapter in `folder` (peft's layout, or minift's for bottleneck adapters) to `model`, the
    base model it was trained from, and copy its tensors in. Returns the method. Every problem (another
    method, another base model, a tensor missing, extra or mis-shaped) is one error naming the file, and
    the model is then left without an adapter."""
    folder = Path(folder)
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no {ADAPTER_CONFIG} (an adapter folder holds {ADAPTER_CONFIG} and "
                                f"{ADAPTER_WEIGHTS})")
    config = read_json(config_path)
    if active_method(model) is not None:
        unload(model)  # switching adapters: the base model first
    _check_base(model, config, config_path)
    tensors = load_state_dict(folder / ADAPTER_WEIGHTS)
    try:
        method, mapped = _apply(model, config, tensors, config_path)
        params = method_parameters(model)
        problems = [f"missing from the adapter: {n}" for n in params if n not in mapped]
        problems += [f"unexpected in the adapter (the model has no such tensor): {n}" for n in mapped if n not in params]
        problems += [f"shape mismatch for {n}: adapter {list(mapped[n].shape)}, model {list(p.shape)}"
                     for n, p in params.items() if n in mapped and mapped[n].shape != p.shape]
        if problems:
            raise ValueError(f"{folder / ADAPTER_WEIGHTS} does not fit {type(model).__name__}:\n  " + "\n  ".join(problems))
    except ValueError:
        unload(model)
        raise
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(mapped[name].to(p.dtype))
    return method


def _check_base(model: nn.Module, config: dict, config_path: Path) -> None:
    """An adapter for another base model: its model_type (minift's files) or the config.json of the base
    it names (peft's base_model_name_or_path, when that folder is here) must match the model's shape."""
    saved_type = config.get("model_type")
    if saved_type is not None and saved_type != model.config.model_type:
        raise ValueError(f"{config_path}: the adapter is for model_type {saved_type!r}, the model is "
                         f"{model.config.model_type!r}")
    base = config.get("base_model_name_or_path") or config.get("base_model")
    base_config = Path(str(base)) / "config.json" if base else None
    if base_config is None or not base_config.is_file():
        return
    other = read_json(base_config)
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "n_embd", "n_layer", "intermediate_size")
    differ = [k for k in keys if k in other and hasattr(model.config, k) and other[k] != getattr(model.config, k)]
    if other.get("model_type", model.config.model_type) != model.config.model_type:
        differ.insert(0, "model_type")
    if differ:
        details = ", ".join(f"{k} {other.get(k)!r} vs {getattr(model.config, k, None)!r}" for k in differ)
        raise ValueError(f"{config_path}: the adapter was trained on {base}, a different base model than the one "
                         f"given ({details}); pass that model with --model")


def _apply(model: nn.Module, config: dict, tensors: dict, path: Path) -> tuple[str, dict]:
    """Apply the method the config names; return it and the tensors under minift's names."""
    if config.get("method") == "bottleneck":
        apply_adapters(model, config["kind"], config["reduction_factor"], head=config.get("head") or [],
                       target_modules=config["target_modules"])
        return "adapter", tensors
    peft_type = config.get("peft_type")
    expected = task_type(model)
    if config.get("task_type") not in (None, expected) and expected is not None:
        raise ValueError(f"{path}: the adapter is for task_type {config['task_type']!r}, but {type(model).__name__} "
                         f"is a {expected!r} model")
    heads = [h for h in (config.get("modules_to_save") or []) if h in dict(model.named_modules())]
    if peft_type == "LORA":
        targets = config["target_modules"]
        if isinstance(targets, str):
            raise ValueError(f"{path}: target_modules is a regular expression ({targets!r}); minift reads lists of "
                             "module-name suffixes")
        apply_lora(model, config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0), targets, heads,
                   use_rslora=config.get("use_rslora", False), use_dora=config.get("use_dora", False))
        mapped = {}
        for key, t in tensors.items():
            name = key.removeprefix("base_model.model.")
            for suffix, leaf in ((".lora_A.weight", ".lora_A"), (".lora_B.weight", ".lora_B"),
                                 (".lora_magnitude_vector", ".magnitude")):
                if name.endswith(suffix):
                    name = name[: -len(suffix)] + leaf
            mapped[name] = t
        return ("dora" if config.get("use_dora") else "lora"), mapped
    if peft_type == "IA3":
        apply_ia3(model, config["target_modules"], config.get("feedforward_modules") or [], heads)
        mapped = {key.removeprefix("base_model.model."): t.flatten() if key.endswith(".ia3_l") else t
                  for key, t in tensors.items()}
        return "ia3", mapped
    if peft_type in ("PROMPT_TUNING", "PREFIX_TUNING"):
        layers, _num_heads, dim = attention_shape(model.config)
        if config.get("token_dim", dim) != dim or config.get("num_layers", layers) != layers:
            raise ValueError(f"{path}: the adapter is for {config.get('num_layers')} layers of width "
                             f"{config.get('token_dim')}, the model has {layers} of width {dim}")
        n = config["num_virtual_tokens"]
        base = base_model(model)
        where = f"{model.base_model_prefix}." if base is not model else ""
        if peft_type == "PROMPT_TUNING":
            apply_prompt_tuning(model, n, head=heads)
            encoder = f"{where}prompt_encoder.embedding.weight"
        else:  # the saved table is the MLP's output: load it without the MLP
            apply_prefix_tuning(model, n, head=heads)
            encoder = f"{where}prefix_encoder.embedding.weight"
        mapped = {(encoder if key == "prompt_embeddings" else key.removeprefix("base_model.")): t
                  for key, t in tensors.items()}
        return ("prompt" if peft_type == "PROMPT_TUNING" else "prefix"), mapped
    raise ValueError(f"{path}: peft_type {peft_type!r} is not one minift reads (LORA, IA3, PROMPT_TUNING, "
                     "PREFIX_TUNING, or minift's bottleneck adapters)")


def adapter_head_rows(folder: str | Path) -> int | None:
    """The number of labels of the task head saved in an adapter folder (its classifier's or score's
    weight rows), or None without one: what a classifier built to receive it needs as num_labels."""
    tensors = load_state_dict(Path(folder) / ADAPTER_WEIGHTS)
    for key, t in tensors.items():
        if key.endswith(("classifier.weight", "score.weight")) and t.dim() == 2:
            return t.shape[0]
    return None


# A run directory of prompt/prefix tuning or adapters names its adapter in config.json: from_pretrained
# loads it with this (minift/models/pretrained.py cannot import minift.peft, which builds on it).
pretrained.ADAPTER_LOADER = load_peft_adapter
