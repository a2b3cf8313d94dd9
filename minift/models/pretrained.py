"""The base class of every minift model: config, weight init and tying, from_pretrained /
save_pretrained in the public layout (lessons 05 and 06).

A subclass names its config class and where its base model lives (``base_model_prefix``); reading
and writing the files is minift/checkpoint/files.py, fitting the tensors into the model is
minift/checkpoint/load.py.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from typing_extensions import Self

from minift.checkpoint.files import (
    CONFIG_NAME,
    CheckpointError,
    existing_folder,
    load_state_dict,
    read_config,
    save_state_dict,
)
from minift.checkpoint.load import copy_into, raise_or_warn, tie_weights, tied_pairs, transposed_names
from minift.io import write_json

ModelT = TypeVar("ModelT", bound="PretrainedModel")

# (model, adapter folder) -> None: minift/peft/peft_files.py's `load_peft_adapter`, which sets it when
# imported. `from_pretrained` calls it for a run directory whose config.json names an adapter
# (`peft_adapter`: prompt, prefix or bottleneck adapters, which do not merge into the weights).
ADAPTER_LOADER: Callable[[Any, Path], Any] | None = None


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of any module (or only those with requires_grad): the one count that
    models, PEFT summaries and run results report. A tied weight counts once: ``parameters()``
    yields a Parameter shared by two modules once."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class PretrainedModel(torch.nn.Module):
    """Base of every minift model: config, weight init and tying, from_pretrained/save_pretrained.

    Subclasses set ``config_class`` (a dataclass with ``from_dict(d, source)`` and ``to_dict()``),
    ``base_model_prefix`` (the attribute holding the base model in head models, e.g. ``"bert"``),
    optionally ``_keys_to_ignore_on_load`` (regexes), ``_tied_weights_keys`` ({target: source}) and
    ``_transposed_weights`` (regexes of weights the checkpoint stores as (in, out), e.g. GPT-2's),
    and implement ``_init_weights(module)``.
    """

    config_class: type
    base_model_prefix: str = ""
    _keys_to_ignore_on_load: tuple[str, ...] = ()
    _tied_weights_keys: dict[str, str] = {}
    _transposed_weights: tuple[str, ...] = ()

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    def _init_weights(self, module: torch.nn.Module) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define _init_weights(module)")

    def post_init(self) -> None:
        """Initialise every submodule's weights, then tie (call at the end of ``__init__``)."""
        self.apply(self._init_weights)
        self.tie_weights()

    def tie_weights(self) -> None:
        tie_weights(self)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters; a tied weight counts once (`count_parameters`)."""
        return count_parameters(self, trainable_only)

    @classmethod
    def from_pretrained(
        cls,
        name_or_folder: str | os.PathLike,
        *,
        strict: bool = True,
        allow_pickle: bool = False,
        new_head: str = "warn",
        **overrides: Any,
    ) -> Self:
        """Build the model from ``config.json`` (+ overrides), load the weights, return it in eval mode.

        A head the checkpoint has no tensors for starts from random weights: ``new_head="warn"`` (to be
        trained: fine-tuning) says so in a warning, ``"error"`` (to be used: prediction, evaluation)
        refuses, since its outputs would be random."""
        _check_overrides(cls, overrides)
        folder = resolve_folder(name_or_folder)
        config_path = folder / CONFIG_NAME
        config_dict = read_config(folder)
        expected_type = getattr(cls.config_class, "model_type", None)
        found_type = config_dict.get("model_type")
        if expected_type is not None and found_type is not None and found_type != expected_type:
            raise CheckpointError(
                f"{config_path}: model_type {found_type!r} cannot be loaded into {cls.__name__}, "
                f"which expects model_type {expected_type!r}"
            )
        config = cls.config_class.from_dict({**config_dict, **overrides}, source=str(config_path))
        model = cls(config)
        state_dict = load_state_dict(folder, allow_pickle=allow_pickle)
        report = copy_into(model, state_dict, source=str(folder))
        if new_head == "error" and report.newly_initialized:
            raise CheckpointError(f"{folder} has no trained {cls.__name__} head ({', '.join(report.newly_initialized)} "
                                  "are not in its weights): its predictions would be random. Fine-tune it first "
                                  "(minift finetune), or load it anyway to experiment (--allow-untrained-head)")
        raise_or_warn(report, strict, stacklevel=3)  # 1: raise_or_warn, 2: here, 3: the caller
        adapter = config_dict.get("peft_adapter")
        if adapter:  # a run of prompt/prefix tuning or adapters: the base model plus its adapter, never the base alone
            if ADAPTER_LOADER is None:
                raise CheckpointError(
                    f"{config_path}: the folder holds a base model plus a {adapter.get('method')} adapter in "
                    f"{folder / adapter['folder']}; `import minift.peft` first, which registers the loader "
                    "(minift.peft builds on this module, so it cannot be imported from here)")
            ADAPTER_LOADER(model, folder / adapter["folder"])
        model._load_extra_files(folder)
        return model.eval()

    def save_pretrained(self, folder: str | os.PathLike, *, max_shard_size: int | str | None = None) -> None:
        """Write config.json and the weights in the public layout (tied copies written once)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict()
        for target in tied_pairs(self):
            state_dict.pop(target, None)  # transformers keeps the source and re-ties on load
        transposed = transposed_names(self)  # back to the checkpoint's (in, out) layout, see transposed_names
        state_dict = {name: t.t() if transposed(name) else t for name, t in state_dict.items()}
        save_state_dict(state_dict, folder, max_shard_size=max_shard_size)
        config = {**self.config.to_dict(), "architectures": [type(self).__name__]}
        write_json(config, folder / CONFIG_NAME)
        self._save_extra_files(folder)

    def _load_extra_files(self, folder: Path) -> None:
        """Files beyond config.json and the weights that a subclass reads (a generative model's
        generation_config.json, minift/generation/mixin.py)."""

    def _save_extra_files(self, folder: Path) -> None:
        """Writes what `_load_extra_files` reads."""


# from_pretrained arguments of transformers that are not config fields, and what to write in minift.
LOADING_INSTEAD = {
    "torch_dtype": "model.to(torch.bfloat16) after loading", "dtype": "model.to(torch.bfloat16) after loading",
    "device_map": "model.to(device) after loading", "trust_remote_code": "nothing: minift runs no code from a checkpoint",
    "low_cpu_mem_usage": "nothing", "revision": "minift weights pull NAME (lessons/30-weights-and-hub.md)",
    "cache_dir": "minift weights pull NAME (lessons/30-weights-and-hub.md)",
}


def _check_overrides(cls: type, overrides: dict) -> None:
    """Keyword arguments of from_pretrained are config fields (num_labels=3, hidden_dropout_prob=0.0,
    attn_impl=...); anything else would be silently dropped by the config, so it is refused."""
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        instead = LOADING_INSTEAD.get(unknown[0], f"one of the fields of {cls.config_class.__name__}")
        raise TypeError(f"{cls.__name__}.from_pretrained got {unknown}, which are not fields of "
                        f"{cls.config_class.__name__}; instead of {unknown[0]}: {instead}")


def resolve_folder(name_or_folder: str | os.PathLike) -> Path:
    """A local folder as is; a path that does not exist is an error; a bare name goes to the hub."""
    path = Path(name_or_folder).expanduser()
    if path.exists():
        return existing_folder(path)
    text = str(name_or_folder)
    if isinstance(name_or_folder, os.PathLike) or path.is_absolute() or text.startswith((".", "~")):
        raise CheckpointError(f"{path}: checkpoint folder not found")
    from minift.hub import resolve  # imported here: the hub pulls in networking code

    return Path(resolve(text))
