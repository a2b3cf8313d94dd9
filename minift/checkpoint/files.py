"""Checkpoint files in the public (Hugging Face) layout: the names, reading and writing.

A checkpoint folder holds ``config.json`` and the weights, either one ``model.safetensors`` or
``model.safetensors.index.json`` plus shards ``model-00001-of-0000N.safetensors``. This module reads
that layout into a plain ``{name: tensor}`` dict (refusing pickles unless asked), and writes a dict
back, sharded or not, so that ``transformers`` reads what we save. Every write is atomic
(`minift.io.atomic_files`: temporary file, fsync, rename). Putting the dict into a model is
``load.py``; the model base class with ``from_pretrained`` is ``minift/models/pretrained.py``.

Lesson: lessons/06-checkpoints.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from minift.io import JSONError, atomic_files, read_json, write_json

CONFIG_NAME = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# Shard names as transformers writes them: model-00001-of-00003.safetensors.
SHARD_NAME = "model-{index:05d}-of-{count:05d}.safetensors"
SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


class CheckpointError(ValueError):
    """Any problem with a checkpoint folder, its config or its tensors."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_config(folder: str | os.PathLike) -> dict:
    """Return ``folder/config.json`` as a dict; any problem is a CheckpointError naming the file."""
    folder = existing_folder(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no config.json in the checkpoint folder {folder}")
    config = _read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: expected a JSON object {{...}} at the top level, found {type(config).__name__}"
        )
    return config


def _read_json(path: Path):
    """`minift.io.read_json`, its errors as CheckpointError (a checkpoint file is what is wrong)."""
    try:
        return read_json(path)
    except (JSONError, FileNotFoundError) as err:
        raise CheckpointError(str(err)) from None


def existing_folder(folder: str | os.PathLike) -> Path:
    """``folder`` as a Path, or a CheckpointError saying it does not exist or is a file."""
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


def read_index(path: Path) -> dict[str, str]:
    """The ``weight_map`` of a shard index (``model.safetensors.index.json``): tensor name -> shard
    file name. The one reader of that file: loading here, and checking a download in minift/hub.py."""
    index = _read_json(path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if (not isinstance(weight_map, dict) or not weight_map
            or not all(isinstance(v, str) for v in weight_map.values())):
        raise CheckpointError(f'{path}: expected {{"weight_map": {{tensor name: shard file}}}}')
    for shard in set(weight_map.values()):
        # A shard is a plain file name next to the index: "../x" would read outside the folder.
        if Path(shard).name != shard:
            raise CheckpointError(f"{path}: shard name {shard!r} is not a plain file name")
    return weight_map


def _load_sharded(index_path: Path, read: Callable[[Path], dict[str, torch.Tensor]]) -> dict:
    """Load every shard named by an index and check that index and shards agree, all at once."""
    weight_map = read_index(index_path)
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
    except Exception as err:  # noqa: BLE001 - torch raises several unrelated types for bad pickles
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
    folder = existing_folder(path)
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
# Writing: sharding, the index
# --------------------------------------------------------------------------------------------


def _parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "200KB", "5GB" (powers of 1000) or "10MiB" (of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
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


def _header_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    return {**(metadata or {}), "format": "pt"}  # transformers checks format == "pt"


def write_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Write one safetensors file, atomically (`minift.io.atomic_files`), with ``{"format": "pt"}``
    added to ``metadata`` in its header. No two tensors may share memory (`save_state_dict` drops
    tied duplicates first); an adapter file (minift/peft/files.py) is written here too."""
    path = Path(path)
    with atomic_files([path]) as (tmp,):
        save_file(tensors, str(tmp), metadata=_header_metadata(metadata))
    return path


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
    tensors = _dedupe(state_dict)
    shards = _plan_shards(tensors, None if max_shard_size is None else _parse_size(max_shard_size))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    if len(shards) == 1:
        write_safetensors(tensors, folder / SAFE_WEIGHTS, metadata)
        _remove_stale(folder, keep={SAFE_WEIGHTS})
        return [folder / SAFE_WEIGHTS]

    names = [SHARD_NAME.format(index=i, count=len(shards)) for i in range(1, len(shards) + 1)]
    with atomic_files([folder / n for n in names]) as tmps:
        for tmp, shard in zip(tmps, shards):
            save_file({n: tensors[n] for n in shard}, str(tmp), metadata=_header_metadata(metadata))
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

