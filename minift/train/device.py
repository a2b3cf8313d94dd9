"""Choosing the device once, moving batches to it, and seeding every random number generator
(lessons 12 and 20).

One code path serves CPU, CUDA and Apple's MPS: the device is picked here, at the start of a run, and
every tensor is created on it or moved to it with ``to_device``. Which 16-bit dtype each device can
autocast to is decided in ``minift/train/precision.py``; which collective backend several processes
use (torchrun) is ``distributed_backend`` below.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

DEVICE_TYPES = ("cpu", "cuda", "mps")
DEVICE_HELP = "expected cpu, cuda, cuda:N, mps or auto"


class DeviceError(ValueError):
    """A --device the machine cannot give: the message names the flag's value and what exists."""


def select_device(name: str | torch.device | None = None) -> torch.device:
    """The device to train on: ``name`` when given ("cpu", "cuda", "cuda:1", "mps"), else the best
    available in the order CUDA -> MPS -> CPU. Asking for a device that is not there is an error,
    not a silent fall-back to the CPU (a run 50x slower than expected is a wrong answer too)."""
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = _parse(name)
    if device.type == "cuda":
        _check_cuda(device, name)
    if device.type == "mps":
        _check_mps(device, name)
    if device.type == "cpu" and device.index not in (None, 0):
        raise DeviceError(f"--device {name}: the CPU is one device, cpu (its threads are set with "
                          "torch.set_num_threads)")
    return device


def _parse(name: str | torch.device) -> torch.device:
    """torch.device(name), with one sentence instead of torch's list of twenty backends."""
    if isinstance(name, torch.device):
        device = name
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError):
            raise DeviceError(f"--device {name!r}: not a device name; {DEVICE_HELP}") from None
    if device.type not in DEVICE_TYPES:
        raise DeviceError(f"--device {name}: minift runs on cpu, cuda and mps, not {device.type}; "
                          f"{DEVICE_HELP}")
    return device


def _check_cuda(device: torch.device, name: str | torch.device) -> None:
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceError(f"--device {name}: CUDA is not available on this machine (torch "
                          f"{torch.__version__}, {build})")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        # Caught here because torch would only fail at the first .to(device), deep in the model code.
        hint = " (as CUDA_VISIBLE_DEVICES numbers them)" if "CUDA_VISIBLE_DEVICES" in os.environ else ""
        raise DeviceError(f"--device {name}: this machine has {count} CUDA device(s), numbered 0 to "
                          f"{count - 1}{hint}")


def _check_mps(device: torch.device, name: str | torch.device) -> None:
    if not torch.backends.mps.is_available():
        raise DeviceError(f"--device {name}: MPS is not available on this machine (it needs Apple "
                          "silicon, macOS 12.3 or later and a torch built with MPS; this is torch "
                          f"{torch.__version__})")
    if device.index not in (None, 0):
        raise DeviceError(f"--device {name}: there is one MPS device, mps (or mps:0)")


def to_device(batch: dict, device: torch.device | str) -> dict:
    """Every tensor of a batch on ``device``; other values (lists of words, ids) are passed through.

    On CUDA the copy is ``non_blocking``: from pinned host memory (the loaders pin it on CUDA,
    ``minift/train/tasks/classification.py: make_loaders``) it is queued on the GPU's stream and overlaps with compute,
    and CUDA orders it before any kernel that reads it. Elsewhere it stays blocking: on the CPU there is
    nothing to copy, and on MPS a non-blocking copy from pageable memory can read the source after it
    was freed and deliver wrong numbers (pytorch/pytorch#139550 and #189690, open).
    """
    device = torch.device(device)
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def distributed_backend(device: torch.device | str) -> str:
    """The torch.distributed backend for processes that train on ``device``: NCCL between CUDA GPUs
    (the all-reduce runs GPU to GPU, over NVLink where there is one), gloo otherwise (CPU tensors;
    it is what lets a test run two DDP processes on a CPU). MPS has no collective backend: torchrun
    with --device mps is refused by minift/train/distributed.py before this is asked."""
    return "nccl" if _parse(device).type == "cuda" else "gloo"


def set_seed(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices), so that weight init, dropout and shuffling repeat."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators
    # Python fixes its own string-hash seed at start-up, so this only reaches processes started later
    # (DataLoader workers under the "spawn" start method): their set/dict order then repeats too.
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
