"""Resumable checkpoints without pickle: stop a run anywhere, continue it to the same end (lesson 12).

A resumable checkpoint is a folder ``RUN_DIR/checkpoints/step-00000120/`` holding
- the model in the public layout (``config.json`` + ``model.safetensors``: loadable on its own);
- ``trainer_state.safetensors``: every tensor of the training state — AdamW's moments and step
  counts (``optimizer.{i}.{name}`` for the i-th parameter of the optimizer) and the torch / CUDA
  random-number-generator states;
- ``trainer_state.json``: everything else — where the run is (step, epoch, batch within the epoch),
  the optimizer's hyper-parameters per group, the schedule's counter, Python's and NumPy's RNG
  states, the evaluation history and the best metric so far.
Nothing is pickled, so loading a checkpoint cannot run code. The folder is assembled under a hidden
temporary name and renamed into place in one step: a kill during a save leaves the previous
checkpoints as they were, and a half-written folder is never mistaken for a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from minift.checkpoint import CheckpointError, load_into, load_state_dict
from minift.io import atomic_folder, json_line, write_text

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"^step-(\d{8})$")
TENSORS, STATE = "trainer_state.safetensors", "trainer_state.json"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first (temporary folders are not listed)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


# --- random number generators --------------------------------------------------------------------

def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every RNG a step can draw from: torch (dropout), CUDA, Python's ``random`` and NumPy."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def stateful_collate(loader):
    """The loader's collate if it keeps random state of its own (a `state_dict`: MLMCollate's masks),
    else None. That state is training state: a checkpoint saves it, and work outside the run must leave
    it where it was."""
    collate = getattr(loader, "collate_fn", None)
    return collate if callable(getattr(collate, "state_dict", None)) else None


@contextlib.contextmanager
def random_state_kept(loader=None):
    """Every RNG a step draws from (`rng_state`) and the loader's collate's own, restored on exit: what
    runs inside (the memory estimate's probe batches) leaves the run's random draws as they were."""
    tensors, meta = rng_state()
    collate = stateful_collate(loader)
    saved = collate.state_dict() if collate is not None else None
    try:
        yield
    finally:
        set_rng_state(tensors, meta)
        if saved is not None:
            collate.load_state_dict(saved)


# --- optimizer -----------------------------------------------------------------------------------

def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` split into tensors (for safetensors) and plain values (for JSON)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value.contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def set_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = meta["param_groups"]
    for group in groups:  # JSON turned the betas tuple into a list
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# --- save / load ---------------------------------------------------------------------------------

def save_checkpoint(run_dir: Path, *, model, optimizer, scheduler, progress: dict, extra: dict | None = None,
                    keep: int | None = None, tokenizer=None) -> Path:
    """Writes ``checkpoints/step-XXXXXXXX`` atomically; then prunes all but the newest ``keep``. With
    ``tokenizer``, its files too: the folder is then a model folder of its own (`minift predict`)."""
    final = Path(run_dir) / CHECKPOINTS / f"step-{progress['step']:08d}"
    # Assembled in a hidden folder, fsynced, renamed into place (minift/io.py); the same step saved
    # again (e.g. Ctrl-C right after a periodic save) replaces the earlier copy.
    with atomic_folder(final) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        opt_tensors, opt_meta = optimizer_state(optimizer)
        rng_tensors, rng_meta = rng_state()
        save_file({**opt_tensors, **rng_tensors}, str(tmp / TENSORS), metadata={"format": "pt"})
        state = {"progress": progress, "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
                 "rng": rng_meta, "extra": extra or {}}
        write_text(tmp / STATE, json_line(state))
    if keep is not None:
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, *, model, optimizer, scheduler) -> dict:
    """Restores model, optimizer, schedule and RNGs from one checkpoint folder; returns its state."""
    try:
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / TENSORS))
        weights = load_state_dict(folder)
    except (OSError, ValueError, json.JSONDecodeError) as e:  # ValueError covers CheckpointError
        raise CheckpointError(f"checkpoint {folder} is damaged or incomplete: {e}") from e
    load_into(model, weights, strict=True, source=str(folder))
    set_optimizer_state(optimizer, tensors, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(tensors, state["rng"])
    return state


def resume(run_dir: Path, *, model, optimizer, scheduler) -> dict:
    """Loads the newest checkpoint that loads; a damaged newer one is reported and passed over
    (it is left on disk, not deleted)."""
    candidates = checkpoint_dirs(run_dir)
    if not candidates:
        raise FileNotFoundError(f"--resume: {run_dir} holds no complete checkpoint "
                                f"({Path(run_dir) / CHECKPOINTS}/step-*); nothing to resume")
    errors = []
    for folder in reversed(candidates):
        try:
            state = load_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler)
        except CheckpointError as e:
            errors.append(str(e))
            warnings.warn(f"{e}; trying the previous checkpoint", stacklevel=2)
            continue
        state["folder"] = str(folder)
        return state
    raise CheckpointError("no checkpoint of the run could be loaded:\n  " + "\n  ".join(errors))
