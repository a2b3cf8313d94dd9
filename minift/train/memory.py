"""How much memory a training run will need, said before the first step, and what to change when it
does not fit.

A training step holds, at its peak (the start of the backward pass, when every activation the forward
saved is still alive and the first gradients appear beside them):

    peak = now + optimizer state + max(activations + largest activation, gradients)

- now: what the process already holds — the Python runtime, torch's libraries, the data, and the
  model's weights (on a CPU the process's resident memory; on CUDA/MPS what torch has allocated);
- optimizer state: AdamW keeps two tensors the size of each trainable parameter, m and v
  (Loshchilov & Hutter 2019, algorithm 2; lesson 08);
- activations: what autograd saves for the backward pass at the run's batch size and length. They are
  *counted*, not guessed: a probe forward on 1 and on 2 copies of the training set's longest example
  records every tensor saved for backward (`torch.autograd.graph.saved_tensors_hooks`), each storage
  once, parameters excluded. The count is a + b·B: a is what does not grow with the batch (under bf16
  autocast, the bf16 copies of the weights), b the part of one example; the two probes give both;
- largest activation: the backward pass starts by computing the gradient of the last saved tensor
  (for a language model the logits, B × T × vocabulary floats), allocated while all the others live;
- gradients: one per trainable parameter, which fill in as the activations are freed (the loop sets
  them to None after each step, so they do not sit beside the next forward's activations).

Lesson: lessons/20-mixed-precision.md ("Memory").
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass

import torch

GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """The parts of a training step's peak memory, in bytes, on ``device``."""

    device: str
    now: int
    gradients: int
    optimizer: int
    activations: int  # at the run's batch size and length
    largest_activation: int
    batch: tuple[int, int]  # (examples per step on this process, tokens per example) of the estimate
    precision: str

    @property
    def peak(self) -> int:
        return self.now + self.optimizer + max(self.activations + self.largest_activation, self.gradients)

    def describe(self) -> str:
        b, t = self.batch
        return (f"estimated peak memory {gib(self.peak)} on {self.device} (held now {gib(self.now)}, "
                f"AdamW state {gib(self.optimizer)}, gradients {gib(self.gradients)}, activations "
                f"{gib(self.activations)} for {b} x {t} tokens in {self.precision})")


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def current_memory(device: torch.device) -> int:
    """What the process holds now: resident memory on a CPU, torch's allocations on CUDA/MPS."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    if device.type == "mps":
        return torch.mps.current_allocated_memory()
    return resident_bytes()


def resident_bytes() -> int:
    """The process's resident set size now (Linux: /proc/self/statm); elsewhere its peak so far, the
    closest number the standard library gives."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def peak_resident_bytes() -> int:
    """The process's peak resident set size so far (ru_maxrss), as the benchmarks measure it."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def available_memory(device: torch.device) -> int | None:
    """Memory a run can still take: MemAvailable on Linux, free device memory on CUDA; None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def saved_activation_bytes(model: torch.nn.Module, loss_fn, batch: dict) -> tuple[int, int]:
    """(total, largest) bytes autograd saves for backward when ``loss_fn(model, batch)`` runs: each
    storage counted once, the model's parameters (already counted as weights) left out."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model, batch)
    del loss  # the graph and everything it saved go with it
    return sum(saved.values()), max(saved.values(), default=0)


def probe_batches(loader, batch_sizes: tuple[int, ...] = (1, 2)) -> list[dict]:
    """Batches of 1 and 2 copies of the loader's longest example (by its text), built with the loader's
    own collate but without iterating the loader: its order and the random state stay untouched."""
    examples = loader.dataset
    longest = max(examples, key=lambda e: len(str(e)))
    return [loader.collate_fn([longest] * b) for b in batch_sizes]


def estimate(model: torch.nn.Module, loss_fn, loader, *, device: torch.device, autocast, precision: str,
             batch_size: int) -> MemoryEstimate:
    """The peak memory of a training step of ``model`` at ``batch_size`` examples per step (the
    longest example of ``loader`` repeated: an upper bound for padding to the longest in the batch).

    The probe forwards run in train mode under the run's autocast, with the random state restored
    afterwards (dropout draws masks), so that the run takes exactly the steps it would without them.
    """
    now = current_memory(device)  # before the probes: what they allocate is freed, but may stay resident
    one, two = (_to(b, device) for b in probe_batches(loader))
    accelerator = device.type if device.type in ("cuda", "mps") else "cuda"
    devices = [device] if device.type in ("cuda", "mps") else []  # the CPU's state is always restored
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=devices, device_type=accelerator):
        with autocast:
            a1, big1 = saved_activation_bytes(model, loss_fn, one)
            a2, big2 = saved_activation_bytes(model, loss_fn, two)
    model.train(was_training)
    per_example = a2 - a1
    fixed = a1 - per_example
    length = next((v.shape[1] for v in one.values() if isinstance(v, torch.Tensor) and v.dim() == 2), 1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    gradient_bytes = sum(p.numel() * p.element_size() for p in trainable)
    return MemoryEstimate(
        device=str(device), now=now, gradients=gradient_bytes,
        optimizer=2 * sum(p.numel() * 4 for p in trainable),  # m and v, fp32 (minift.optim.AdamW)
        activations=max(fixed + per_example * batch_size, 0),
        largest_activation=big1 + (big2 - big1) * (batch_size - 1),  # the largest grows with B too
        batch=(batch_size, length), precision=precision)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def advice(estimate: MemoryEstimate | None = None) -> str:
    """What to change when a run does not fit, cheapest first."""
    start = f"The run needs about {gib(estimate.peak)}. " if estimate is not None else ""
    return (start + "To fit: a smaller --batch-size with --grad-accum K keeps the same effective batch "
            "(activations shrink with the batch); a smaller --max-length (activations grow with it, "
            "attention with its square); --precision bf16 (activations in half the bytes); freezing "
            "(--freeze) or --peft lora (no gradients and no AdamW state for the frozen weights).")


def warn_if_too_large(estimate: MemoryEstimate, available: int | None) -> str | None:
    """The warning to print when the estimate exceeds the memory left, or None. On a CPU the kernel
    kills a process that runs out of memory without an error it could catch: this is the only
    moment to say it."""
    if available is None or estimate.peak <= available:
        return None
    return (f"warning: {estimate.describe()}, but only {gib(available)} is available on {estimate.device}. "
            + advice(estimate))


class OutOfMemory(RuntimeError):
    """An out-of-memory error of the device, with what to change."""
