"""Checkpoints in the public (Hugging Face) layout: read, check, map, load and save.

A checkpoint folder holds ``config.json`` and the weights, either one ``model.safetensors`` or
``model.safetensors.index.json`` plus shards ``model-00001-of-0000N.safetensors``. This module reads
that layout into a plain ``{name: tensor}`` dict, loads the dict into a model (mapping names across
the ``base_model_prefix`` and reporting every problem at once), and writes it back so that
``transformers`` reads what we save. Every write is atomic (temporary file, fsync, ``os.replace``).

``PretrainedModel`` is the base class of every minift model; it adds ``from_pretrained``,
``save_pretrained`` and weight tying on top of ``torch.nn.Module``.

Lesson: lessons/06-checkpoints.md.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

CONFIG_NAME = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# Shard names as transformers writes them: model-00001-of-00003.safetensors.
SHARD_NAME = "model-{index:05d}-of-{count:05d}.safetensors"
SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


ModelT = TypeVar("ModelT", bound="PretrainedModel")


class CheckpointError(ValueError):
    """Any problem with a checkpoint folder, its config or its tensors."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read the file ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path}, line {err.lineno}, column {err.colno}: invalid JSON ({err.msg})"
        ) from None


def read_config(folder: str | os.PathLike) -> dict:
    """Return ``folder/config.json`` as a dict; any problem is a CheckpointError naming the file."""
    folder = _existing_folder(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no config.json in the checkpoint folder {folder}")
    config = read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: expected a JSON object {{...}} at the top level, found {type(config).__name__}"
        )
    return config


def _existing_folder(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: expected a checkpoint folder, found a file")
    return folder


# safetensors reports problems in terse phrases; say what each means for the user. The format is
# 8 bytes of header length N, N bytes of JSON header, then the raw tensor bytes (see the lesson).
_SAFETENSORS_MEANING = {
    "header too small": "the file is shorter than the 8-byte header length: it is empty or truncated",
    "invalid header length": "the header length in the first 8 bytes runs past the end of the file: "
    "the file is truncated",
    "incomplete metadata": "the tensors listed in the header do not cover the file's bytes: the file is "
    "truncated (an interrupted download or copy?) or has bytes appended",
    "header too large": "the first 8 bytes give an implausible header length: this is not a "
    "safetensors file, or it is corrupted",
    "in header": "the JSON header is corrupted",
    "invalid": "a tensor entry in the header is inconsistent: the file is corrupted",
}


def _explain_safetensors_error(path: Path, err: Exception) -> CheckpointError:
    text = str(err)
    meaning = next((m for phrase, m in _SAFETENSORS_MEANING.items() if phrase in text), "unreadable")
    return CheckpointError(f"{path}: not a valid safetensors file: {meaning} (safetensors says: {text})")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one .safetensors file, on the CPU."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - not a dict
    except SafetensorError as err:
        raise _explain_safetensors_error(path, err) from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the file ({err})") from None


def _read_index(path: Path) -> dict[str, str]:
    """The ``weight_map`` of a shard index: tensor name -> shard file name."""
    index = read_json(path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f'{path}: expected {{"weight_map": {{tensor name: shard file}}}}')
    for shard in set(weight_map.values()):
        # A shard is a plain file name next to the index: "../x" would read outside the folder.
        if Path(shard).name != shard:
            raise CheckpointError(f"{path}: shard name {shard!r} is not a plain file name")
    return weight_map


def _load_sharded(index_path: Path, read: Callable[[Path], dict[str, torch.Tensor]]) -> dict:
    """Load every shard named by an index and check that index and shards agree, all at once."""
    weight_map = _read_index(index_path)
    problems = []
    state_dict: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            problems.append(f"shard {shard} named by the index is missing")
            continue
        tensors = read(shard_path)
        listed = {name for name, file in weight_map.items() if file == shard}
        for name in sorted(listed - tensors.keys()):
            problems.append(f"tensor {name} is listed in the index for {shard} but {shard} lacks it")
        for name in sorted(tensors.keys() - listed):
            problems.append(f"{shard} holds tensor {name}, which the index does not list there")
        state_dict.update({name: t for name, t in tensors.items() if name in listed})
    if problems:
        raise CheckpointError(f"{index_path}: index and shards disagree:\n  " + "\n  ".join(problems))
    return state_dict


def _refuse_pickle(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path}: refusing to load a pickle checkpoint. Unpickling can run arbitrary code hidden in "
        "the file, so minift reads safetensors only. If you trust the file, convert it once:\n"
        "    from minift.checkpoint import load_state_dict, save_state_dict\n"
        f"    save_state_dict(load_state_dict({str(path)!r}, allow_pickle=True), 'OUT_FOLDER')\n"
        "(allow_pickle=True uses torch.load(..., weights_only=True), which unpickles tensors only)."
    )


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A torch.save'd state dict, unpickled with weights_only=True (tensors and containers only)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for bad pickles
        raise CheckpointError(f"{path}: cannot load with torch.load(weights_only=True): {err}") from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"{path}: expected a flat {{name: tensor}} state dict")
    return obj


def load_state_dict(folder: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read the weights of a checkpoint folder (or one weights file) into ``{name: tensor}``.

    Looks for, in order: ``model.safetensors``, ``model.safetensors.index.json`` + shards, and
    (only with ``allow_pickle=True``) ``pytorch_model.bin`` or its index. Tensors stay on the CPU.
    """
    path = Path(folder)
    if path.is_file():
        return _load_file(path, allow_pickle)
    folder = _existing_folder(path)
    if (folder / SAFE_WEIGHTS).is_file():
        return _read_safetensors(folder / SAFE_WEIGHTS)
    if (folder / SAFE_INDEX).is_file():
        return _load_sharded(folder / SAFE_INDEX, _read_safetensors)
    for name in (PICKLE_WEIGHTS, PICKLE_INDEX):
        if (folder / name).is_file():
            return _load_file(folder / name, allow_pickle)
    found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise CheckpointError(
        f"{folder}: no weights found (looked for {SAFE_WEIGHTS} and {SAFE_INDEX}); the folder holds: {found}"
    )


def _load_file(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if path.name.endswith(".safetensors"):
        return _read_safetensors(path)
    if path.name.endswith(".safetensors.index.json"):
        return _load_sharded(path, _read_safetensors)
    if path.suffix in (".bin", ".pt", ".pth") or path.name == PICKLE_INDEX:
        if not allow_pickle:
            raise _refuse_pickle(path)
        if path.name.endswith(".index.json"):
            return _load_sharded(path, _read_pickle)
        return _read_pickle(path)
    raise CheckpointError(f"{path}: unknown weights file type (expected .safetensors)")


# --------------------------------------------------------------------------------------------
# Loading into a model: name map, strict report, tying
# --------------------------------------------------------------------------------------------


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


def _tied_pairs(model: torch.nn.Module) -> dict[str, str]:
    """{target: source} pairs to tie, unless the config opts out (tie_word_embeddings=False)."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", True) is False:
        return {}
    return dict(getattr(model, "_tied_weights_keys", None) or {})


def tie_weights(model: torch.nn.Module) -> None:
    """Make each tied target the very same Parameter as its source (one tensor, two names)."""
    for target, source in _tied_pairs(model).items():
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
    report = _copy_into(model, state_dict, source)
    _raise_or_warn(report, strict, stacklevel=3)  # 1: _raise_or_warn, 2: here, 3: the caller
    return report


def _copy_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> LoadReport:
    """The work of load_into: map names, copy what fits, tie, and list what did not fit."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    ignore = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load", ())]
    ignored = lambda name: any(p.search(name) for p in ignore)  # noqa: E731
    tied = _tied_pairs(model)
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
    transposed = _transposed(model)
    with torch.no_grad():
        for name in sorted(incoming.keys() & expected):
            value, target = incoming[name], model_tensors[name]
            # A weight stored (in, out) (see _transposed) is compared and reported in that layout.
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
def _transposed(model: torch.nn.Module) -> Callable[[str], bool]:
    """A test for model-side names: is this weight stored transposed in the checkpoint?"""
    patterns = [re.compile(p) for p in getattr(model, "_transposed_weights", ())]
    return lambda name: any(p.search(name) for p in patterns)


def _raise_or_warn(report: LoadReport, strict: bool, stacklevel: int) -> None:
    """Raise on errors when strict; otherwise warn once, with every name, if anything is off."""
    if strict and report.has_errors:
        raise CheckpointError(str(report) + "\n(pass strict=False to load anyway and keep the rest)")
    if report.has_errors or report.newly_initialized or report.unused:
        # stacklevel points the warning at the user's line, not at this module.
        warnings.warn(str(report), UserWarning, stacklevel=stacklevel)


# --------------------------------------------------------------------------------------------
# Saving: atomic writes, sharding, the index
# --------------------------------------------------------------------------------------------


@contextmanager
def atomic_files(finals: list[Path]) -> Iterator[list[Path]]:
    """Yield temporary paths next to ``finals``; once all are written, fsync and rename them into place.

    ``os.replace`` is atomic: a reader sees the old file or the new one, never a half-written one.
    The temporary files live in the same directory because a rename across file systems is a copy.
    All data is written and fsynced before the first rename, so a crash while writing leaves every
    old file intact; only the renames themselves (no data, microseconds) are not atomic as a group.
    On any error the temporary files are removed and the old files are untouched.
    """
    tmps: list[Path] = []
    try:
        for final in finals:
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            os.close(fd)
            tmps.append(Path(tmp))
        yield tmps
        for tmp in tmps:
            _fsync_file(tmp)  # the bytes reach the disk before the name points at them
        for tmp, final in zip(tmps, finals):
            os.replace(tmp, final)
    except BaseException:  # also KeyboardInterrupt: never leave a temporary file behind
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(finals[0].parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (the directory entry); not possible on Windows, where it's a no-op."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(data: Any, path: Path) -> None:
    """Write ``data`` as indented JSON with sorted keys (stable diffs), atomically (``atomic_files``)."""
    with atomic_files([path]) as (tmp,):
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "200KB", "5GB" (powers of 1000) or "10MiB" (of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(size), flags=re.I)
    if isinstance(size, bool) or match is None:
        raise CheckpointError(f"max_shard_size={size!r}: expected bytes (int) or a string like '5GB'")
    unit = (match.group(2) or "B").upper()
    power = "BKMGT".index(unit[0])
    bytes_ = int(float(match.group(1)) * (1024 if "I" in unit else 1000) ** power)
    if bytes_ <= 0:
        raise CheckpointError(f"max_shard_size={size!r}: must be at least one byte")
    return bytes_


def _dedupe(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One contiguous tensor per storage: safetensors refuses tensors that share memory.

    An exact alias (a tied weight under a second name) is written once, under its first name;
    a partial view of another tensor's storage is copied so that it owns its bytes.
    """
    seen: set[tuple] = set()
    owners: set[tuple] = set()
    result = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        if tensor.numel() == 0:  # owns no bytes; its data_ptr may be shared by every empty tensor
            result[name] = tensor.detach()
            continue
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        view = (storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if view in seen:
            continue
        seen.add(view)
        if storage in owners or not tensor.is_contiguous():
            tensor = tensor.contiguous().clone()
        owners.add(storage)
        result[name] = tensor.detach()
    return result


def _plan_shards(tensors: dict[str, torch.Tensor], max_bytes: int | None) -> list[list[str]]:
    """Group names into shards in state-dict order, as huggingface_hub does.

    A shard closes when the next tensor would push it past ``max_bytes``; a tensor larger than
    ``max_bytes`` on its own gets a shard of its own.
    """
    if max_bytes is None:
        return [list(tensors)]
    shards: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if size > max_bytes:
            shards.append([name])
            continue
        if current and current_bytes + size > max_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(name)
        current_bytes += size
    if current or not shards:
        shards.append(current)
    return shards


def save_state_dict(
    state_dict: dict[str, torch.Tensor],
    folder: str | os.PathLike,
    *,
    max_shard_size: int | str | None = None,
    metadata: dict[str, str] | None = None,
) -> list[Path]:
    """Write ``state_dict`` to ``folder`` as model.safetensors, or as shards + index; return the files.

    ``max_shard_size`` is bytes or a string such as "5GB"; None writes one file. ``metadata``
    (str -> str) goes into each file's header next to ``{"format": "pt"}``.

    Each file is written atomically. A sharded save writes all shards to temporary files first,
    then renames them into place, then the index; only after that are files of an older save that
    the new one does not use (a previous single file or extra shards) removed.
    """
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in (metadata or {}).items()):
        raise CheckpointError(f"metadata must map str to str (the safetensors header), got {metadata!r}")
    file_metadata = {**(metadata or {}), "format": "pt"}  # transformers checks format == "pt"
    tensors = _dedupe(state_dict)
    shards = _plan_shards(tensors, None if max_shard_size is None else _parse_size(max_shard_size))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    if len(shards) == 1:
        with atomic_files([folder / SAFE_WEIGHTS]) as (tmp,):
            save_file(tensors, str(tmp), metadata=file_metadata)
        _remove_stale(folder, keep={SAFE_WEIGHTS})
        return [folder / SAFE_WEIGHTS]

    names = [SHARD_NAME.format(index=i, count=len(shards)) for i in range(1, len(shards) + 1)]
    with atomic_files([folder / n for n in names]) as tmps:
        for tmp, shard in zip(tmps, shards):
            save_file({n: tensors[n] for n in shard}, str(tmp), metadata=file_metadata)
    index = {
        "metadata": {
            "total_parameters": sum(t.numel() for t in tensors.values()),
            "total_size": sum(t.numel() * t.element_size() for t in tensors.values()),
        },
        "weight_map": {name: file for file, shard in zip(names, shards) for name in shard},
    }
    write_json(index, folder / SAFE_INDEX)
    _remove_stale(folder, keep={SAFE_INDEX, *names})
    return [folder / n for n in names] + [folder / SAFE_INDEX]


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Delete weight files of an older save (single file, index, shards) that are not in ``keep``."""
    for path in folder.iterdir():
        is_weights = path.name in (SAFE_WEIGHTS, SAFE_INDEX) or SHARD_PATTERN.fullmatch(path.name)
        if is_weights and path.name not in keep and path.is_file():
            path.unlink()


# --------------------------------------------------------------------------------------------
# The model base class
# --------------------------------------------------------------------------------------------


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
        """Number of parameters; a tied weight counts once (``parameters()`` yields it once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @classmethod
    def from_pretrained(
        cls: type[ModelT],
        name_or_folder: str | os.PathLike,
        *,
        strict: bool = True,
        allow_pickle: bool = False,
        **overrides: Any,
    ) -> ModelT:
        """Build the model from ``config.json`` (+ overrides), load the weights, return it in eval mode."""
        folder = _resolve(name_or_folder)
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
        report = _copy_into(model, state_dict, source=str(folder))
        _raise_or_warn(report, strict, stacklevel=3)  # 1: _raise_or_warn, 2: here, 3: the caller
        return model.eval()

    def save_pretrained(self, folder: str | os.PathLike, *, max_shard_size: int | str | None = None) -> None:
        """Write config.json and the weights in the public layout (tied copies written once)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict()
        for target in _tied_pairs(self):
            state_dict.pop(target, None)  # transformers keeps the source and re-ties on load
        transposed = _transposed(self)  # back to the checkpoint's (in, out) layout, see _transposed
        state_dict = {name: t.t() if transposed(name) else t for name, t in state_dict.items()}
        save_state_dict(state_dict, folder, max_shard_size=max_shard_size)
        config = {**self.config.to_dict(), "architectures": [type(self).__name__]}
        write_json(config, folder / CONFIG_NAME)


def _resolve(name_or_folder: str | os.PathLike) -> Path:
    """A local folder as is; a path that does not exist is an error; a bare name goes to the hub."""
    path = Path(name_or_folder).expanduser()
    if path.exists():
        return _existing_folder(path)
    text = str(name_or_folder)
    if isinstance(name_or_folder, os.PathLike) or path.is_absolute() or text.startswith((".", "~")):
        raise CheckpointError(f"{path}: checkpoint folder not found")
    from minift.hub import resolve  # imported here: the hub pulls in networking code

    return Path(resolve(text))
