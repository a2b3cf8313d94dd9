"""Choosing the device once and seeding every random number generator (lesson 12).

One code path serves CPU, CUDA and Apple's MPS: the device is picked here, at the start of a run,
and every tensor is created on it or moved to it with ``to_device``.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def select_device(name: str | None = None) -> torch.device:
    """The device to train on: ``name`` when given ("cpu", "cuda", "cuda:1", "mps"), else the best
    available in the order CUDA -> MPS -> CPU. Asking for a device that is not there is an error,
    not a silent fall-back to the CPU (a run 50x slower than expected is a wrong answer too)."""
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: expected cpu, cuda[:N] or mps")
    return device


def to_device(batch: dict, device: torch.device) -> dict:
    """Moves every tensor of a batch to ``device``. ``non_blocking`` lets a CUDA copy from pinned
    memory overlap with compute; on the CPU it is a no-op."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def set_seed(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices), so that weight init, dropout and shuffling repeat."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
