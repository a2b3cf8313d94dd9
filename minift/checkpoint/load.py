"""Loading a ``{name: tensor}`` dict into a model: the name map, one report of every problem, tying.

``load_into`` maps checkpoint names across the ``base_model_prefix`` (a base checkpoint into a head
model and back, as transformers does), renames TensorFlow-era ``gamma``/``beta``, transposes the
weights a model stores as (in, out) (GPT-2's Conv1D), copies what fits, ties shared weights, and
reports everything that did not fit at once: missing, unexpected and mis-shaped tensors are errors
under ``strict=True``; a new task head and another head's tensors only warn.

Lesson: lessons/06-checkpoints.md.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from minift.checkpoint.files import CheckpointError


@dataclass
class LoadReport:
    """What happened when a state dict met a model; ``str(report)`` is the readable form.

    Errors under ``strict=True``: ``missing`` (model tensors the checkpoint lacks), ``unexpected``
    (checkpoint tensors inside the base model that the model lacks) and ``mismatched`` (name,
    checkpoint shape, model shape). Only warned about: ``newly_initialized`` (head tensors a base
    checkpoint cannot have) and ``unused`` (tensors of another head, e.g. ``cls.predictions.*``).
    """

    source: str = ""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    newly_initialized: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)

    @property
    def has_errors(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"loading {self.source or 'state dict'}: {len(self.loaded)} tensors loaded"]
        for name in self.missing:
            lines.append(f"  missing from the checkpoint: {name}")
        for name in self.unexpected:
            lines.append(f"  unexpected in the checkpoint (the model has no such tensor): {name}")
        for name, ckpt_shape, model_shape in self.mismatched:
            lines.append(
                f"  shape mismatch for {name}: checkpoint {list(ckpt_shape)}, model {list(model_shape)}"
            )
        if self.newly_initialized:
            lines.append(f"  newly initialised: {', '.join(self.newly_initialized)} (train before use)")
        if self.unused:
            lines.append(f"  not used (another head's tensors): {', '.join(self.unused)}")
        return "\n".join(lines)


def tied_pairs(model: torch.nn.Module) -> dict[str, str]:
    """{target: source} pairs to tie, unless the config opts out (tie_word_embeddings=False). A model
    whose ties depend on more than that flag (the Transformer's shared source/target embeddings, an
    option of their own) sets `_ties_follow_config` and lists exactly the ties its config asks for."""
    if getattr(model, "_ties_follow_config", False):
        return dict(model._tied_weights_keys)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", True) is False:
        return {}
    return dict(getattr(model, "_tied_weights_keys", None) or {})


def tie_weights(model: torch.nn.Module) -> None:
    """Make each tied target the very same Parameter as its source (one tensor, two names)."""
    for target, source in tied_pairs(model).items():
        module_name, _, attr = target.rpartition(".")
        owner = model.get_submodule(module_name) if module_name else model
        setattr(owner, attr, model.get_parameter(source))


# Checkpoints converted from the original TensorFlow BERT (bert-base-uncased among them) call
# LayerNorm's scale and shift "gamma" and "beta" (Ba et al. 2016, eq. 4); transformers renames them.
LEGACY_SUFFIXES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}


def _modern_name(name: str) -> str:
    for old, new in LEGACY_SUFFIXES.items():
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def _map_names(names: list[str], model_names: set[str], prefix: str) -> dict[str, str]:
    """Checkpoint name -> model name, across the base_model_prefix (as transformers does).

    A base checkpoint (``embeddings.*``) loaded into a head model (``bert.embeddings.*``) gains the
    prefix; a head checkpoint (``bert.*``, ``classifier.*``) loaded into a base model loses it, and
    its names without the prefix (the head) then match nothing and end up reported as unused.
    """
    dotted = prefix + "."
    ckpt_has_prefix = any(n.startswith(dotted) for n in names)
    model_has_prefix = any(n.startswith(dotted) for n in model_names)
    if prefix and model_has_prefix and not ckpt_has_prefix:
        mapped = {name: dotted + name for name in names}
    elif prefix and ckpt_has_prefix and not model_has_prefix:
        mapped = {name: name.removeprefix(dotted) for name in names}
    else:
        mapped = {name: name for name in names}
    return {name: _modern_name(model_name) for name, model_name in mapped.items()}


def _head_classifier(renamed: dict[str, str], model_names: set[str], prefix: str) -> Callable[[str], bool]:
    """A test for model-side names: is this tensor part of a task head rather than the base model?

    In a head model the base lives under ``prefix.`` and everything else is head. A base model has
    no head of its own; what a head checkpoint brings beyond ``prefix.*`` (``classifier.*``) is head.
    """
    dotted = prefix + "."
    if not prefix:
        return lambda name: False
    if any(n.startswith(dotted) for n in model_names):
        return lambda name: not name.startswith(dotted)
    head_checkpoint = any(c.startswith(dotted) for c in renamed)
    from_head = {m for c, m in renamed.items() if head_checkpoint and not c.startswith(dotted)}
    return lambda name: name in from_head


def load_into(
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "",
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` and return one report of everything that did not fit.

    With ``strict=True`` any missing base-model tensor, unexpected base-model tensor or shape
    mismatch raises one CheckpointError listing them all; new head tensors and another head's
    tensors only warn (``newly initialised: ..., train before use``), like transformers.
    """
    report = copy_into(model, state_dict, source)
    raise_or_warn(report, strict, stacklevel=3)  # 1: raise_or_warn, 2: here, 3: the caller
    return report


def copy_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> LoadReport:
    """The work of load_into: map names, copy what fits, tie, and list what did not fit."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    ignore = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load", ())]
    ignored = lambda name: any(p.search(name) for p in ignore)
    tied = tied_pairs(model)
    model_tensors = {k: v for k, v in model.state_dict(keep_vars=True).items() if not ignored(k)}
    model_names = set(model_tensors)

    renamed = _map_names([k for k in state_dict if not ignored(k)], model_names, prefix)
    report = LoadReport(source=source)
    incoming: dict[str, torch.Tensor] = {}
    for ckpt_name, model_name in renamed.items():
        if model_name in incoming:  # e.g. both LayerNorm.gamma and LayerNorm.weight: which one is right?
            report.unexpected.append(f"{ckpt_name} (a second tensor for {model_name})")
            continue
        incoming[model_name] = state_dict[ckpt_name]
    origin = {model_name: ckpt_name for ckpt_name, model_name in renamed.items()}
    # Tied targets are not loaded: tying makes them the source. An old checkpoint that stored only
    # the target (e.g. the decoder and not the embedding) still provides the source's values.
    for target, src in tied.items():
        value = incoming.pop(target, None)
        if value is not None and src not in incoming:
            incoming[src] = value
    expected = model_names - tied.keys()
    in_head = _head_classifier(renamed, model_names, prefix)

    # A head the checkpoint holds no tensor of is new (a base checkpoint, or another task's);
    # a head it holds only part of is a broken checkpoint, reported as missing.
    has_this_head = any(in_head(name) for name in incoming.keys() & expected)
    for name in sorted(expected - incoming.keys()):
        new_head = in_head(name) and not has_this_head
        (report.newly_initialized if new_head else report.missing).append(name)
    for name in sorted(incoming.keys() - expected):  # reported by the checkpoint's own names
        (report.unused if in_head(name) else report.unexpected).append(origin.get(name, name))
    transposed = transposed_names(model)
    with torch.no_grad():
        for name in sorted(incoming.keys() & expected):
            value, target = incoming[name], model_tensors[name]
            # A weight stored (in, out) (see transposed_names) is compared and reported in that layout.
            expected_shape = tuple(reversed(target.shape)) if transposed(name) else tuple(target.shape)
            if tuple(value.shape) != expected_shape:
                report.mismatched.append((name, tuple(value.shape), expected_shape))
                continue
            if transposed(name):
                value = value.t()
            target.copy_(value.to(dtype=target.dtype))
            report.loaded.append(name)
    tie_weights(model)
    return report


# GPT-2's attention and MLP projections: OpenAI's TensorFlow code wrote them as 1x1 convolutions,
# whose kernel is stored (in_features, out_features), and transformers' `Conv1D` kept that layout;
# minift models use nn.Linear, whose weight is (out_features, in_features). A model lists the
# affected names as regexes in `_transposed_weights`; they are transposed here on load and in
# `PretrainedModel.save_pretrained` on save, and nowhere else.
def transposed_names(model: torch.nn.Module) -> Callable[[str], bool]:
    """A test for model-side names: is this weight stored transposed in the checkpoint?"""
    patterns = [re.compile(p) for p in getattr(model, "_transposed_weights", ())]
    return lambda name: any(p.search(name) for p in patterns)


def raise_or_warn(report: LoadReport, strict: bool, stacklevel: int) -> None:
    """Raise on errors when strict; otherwise warn once, with every name, if anything is off."""
    if strict and report.has_errors:
        raise CheckpointError(str(report) + "\n(pass strict=False to load anyway and keep the rest)")
    if report.has_errors or report.newly_initialized or report.unused:
        # stacklevel points the warning at the user's line, not at this module.
        warnings.warn(str(report), UserWarning, stacklevel=stacklevel)
