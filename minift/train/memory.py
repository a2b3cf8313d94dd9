"""How much memory a training run will need, said before the first step, and what to change when it
does not fit (lessons/22-performance.md, "Memory a run needs").

A training step's peak memory is

    peak = now + optimizer state + heap factor x step + heap constant

- now: what the process already holds before training: the Python runtime, torch's libraries, the
  data and the model's weights (on a CPU the process's resident memory; on CUDA/MPS what torch has
  allocated);
- optimizer state: AdamW keeps two float32 tensors the size of each trainable parameter, m and v
  (Loshchilov & Hutter 2019, algorithm 2; lesson 08), created at the first step and kept;
- step: the most bytes alive at once among the tensors a forward and backward pass create — the
  activations autograd saves for backward, the temporaries of each operation, the gradients of the
  activations and, by the end of the backward pass, one gradient per trainable parameter. It is
  *counted*, not guessed: `LiveBytes` watches every tensor the probe passes create (a
  `TorchDispatchMode` sees each operation's outputs; a finalizer on each storage sees it freed) and
  keeps the running total. The probes run on 2 and 3 copies of the training set's longest example;
  every count along the pass is a + b x B (a: what does not grow with the batch, such as the
  parameters' gradients; b: one example's share), so the two probes give the whole curve at the
  run's batch size B, and its maximum is the step;
- heap factor and constant: on Linux a CPU tensor's memory comes from glibc's malloc, which keeps
  the memory of freed tensors in its heap for reuse instead of returning it to the system, and the
  heap's layout leaves some of it unusable for the next step's tensors; the first pass also loads
  the kernels' code and the first step keeps the freed gradients' memory. None of that is a tensor,
  so none of it can be counted: it was measured. Resident memory settles, after a few steps, at
  GLIBC_HEAP_FACTOR x step + GLIBC_HEAP_CONSTANT above what the process held plus the AdamW state;
  the two numbers are a fit to MiniLM's measured peaks (three batch x length shapes, fp32 and bf16),
  checked on GPT-2 small's shapes, which the fit did not see (`benchmarks/memory.py` prints the
  estimate and the measured peak side by side; README has the table). Resident memory can be made
  to follow the live tensors instead (glibc's `MALLOC_MMAP_THRESHOLD_=131072` returns every large
  block at once), at a price in time: each step then faults in fresh pages for every large tensor. On CUDA and MPS the estimate is of torch's allocations (factor 1, constant 0), what
  `torch.cuda.max_memory_allocated` reports.

Not counted: memory inside a kernel (BLAS and oneDNN workspaces), the data loader's worker
processes, and a checkpoint being written.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from minift.train import state

GIB = 2**30

# Resident memory under glibc's malloc (Linux) after the heap has settled, above what the process held
# plus the AdamW state: GLIBC_HEAP_FACTOR x the counted step + GLIBC_HEAP_CONSTANT (fitted on MiniLM
# 8 x 64, 8 x 128 and 32 x 128 in fp32 and 32 x 128 in bf16; benchmarks/memory.py).
GLIBC_HEAP_FACTOR = 1.5
GLIBC_HEAP_CONSTANT = 2**28  # 0.25 GiB

PROBE_BATCH_SIZES = (2, 3)  # at 1 example some operations take another path (the op sequence differs)


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensor storages created inside the context and still alive: `live` now,
    `peak` the most at once, `timeline` the count after every operation. A view shares its base's
    storage and is counted once; a storage is uncounted when its last tensor is freed."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[int, int] = {}  # storage id -> bytes, while alive
        self.live = 0
        self.peak = 0
        self.timeline: list[int] = []

    def _freed(self, key: int) -> None:
        self.live -= self.sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage._cdata  # the C++ storage's address: one per storage while it lives
                if key not in self.sizes:
                    self.sizes[key] = storage.nbytes()
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._freed, key)
        self.peak = max(self.peak, self.live)
        self.timeline.append(self.live)
        return out


@dataclass(frozen=True)
class MemoryEstimate:
    """The parts of a training step's peak memory, in bytes, on ``device``."""

    device: str
    now: int
    optimizer: int
    step: int  # counted: the most bytes alive at once in a forward + backward at the run's batch
    heap_factor: float
    heap_constant: int
    batch: tuple[int, int]  # (examples per step on this process, tokens per example)
    precision: str

    @property
    def peak(self) -> int:
        return int(self.now + self.optimizer + self.heap_factor * self.step + self.heap_constant)

    def describe(self) -> str:
        b, t = self.batch
        heap = (f" x {self.heap_factor:g} + {gib(self.heap_constant)} for the heap (minift/train/memory.py)"
                if self.heap_factor != 1 or self.heap_constant else "")
        return (f"estimated peak memory {gib(self.peak)} on {self.device}: held now {gib(self.now)}, AdamW "
                f"state {gib(self.optimizer)}, a step at {b} x {t} tokens in {self.precision} {gib(self.step)}{heap}")


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def heap_overhead(device: torch.device) -> tuple[float, int]:
    """(factor, constant): the resident memory of a step is factor x its counted bytes + constant.
    glibc's heap on Linux (measured); (1, 0) elsewhere (CUDA/MPS: torch's allocations themselves;
    a CPU with another C library: not measured)."""
    if device.type == "cpu" and sys.platform.startswith("linux"):
        return GLIBC_HEAP_FACTOR, GLIBC_HEAP_CONSTANT
    return 1.0, 0


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
        return peak_memory(torch.device("cpu"))


def peak_memory(device: torch.device) -> int:
    """The measured peak: this process's peak resident set size on a CPU (`peak_resident_bytes`), as
    the benchmarks measure it; torch's peak allocation on CUDA."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return peak_resident_bytes()


def peak_resident_bytes() -> int:
    """This process's own peak resident set size, in bytes.

    On Linux the high-water mark of its address space (VmHWM in /proc/self/status), not ru_maxrss:
    Linux carries ru_maxrss across execve, so a process started by a large one (a test suite, a
    notebook, a benchmark holding models) reports at least its parent's size at the fork, whatever it
    used itself. Elsewhere ru_maxrss (bytes on macOS, KiB on the BSDs)."""
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # "VmHWM:  123456 kB"
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


def count_step(model: torch.nn.Module, loss_fn, batch: dict) -> list[int]:
    """The bytes alive after every operation of ``loss_fn(model, batch).backward()``, counted by
    `LiveBytes`. The parameters' gradients are set back to None after (they were None before: the
    loop frees them after every step), so the model is as it was."""
    with LiveBytes() as counter:
        loss = loss_fn(model, batch)
        loss.backward()
        del loss  # the graph and what it saved go with it
        for p in model.parameters():
            p.grad = None
    return counter.timeline


def extrapolate(small: list[int], large: list[int], sizes: tuple[int, int], batch_size: int) -> int:
    """The most bytes alive at once at ``batch_size``, from the counts at two batch sizes. Where both
    passes ran the same operations, every count is a + b x B, line by line; otherwise (another path
    for another size) the two maxima are extrapolated instead."""
    n1, n2 = sizes
    if len(small) == len(large):
        return max(int(s + (lg - s) * (batch_size - n1) / (n2 - n1)) for s, lg in zip(small, large))
    return int(max(small) + (max(large) - max(small)) * (batch_size - n1) / (n2 - n1))


def probe_batches(loader, batch_sizes: tuple[int, ...] = PROBE_BATCH_SIZES) -> list[dict]:
    """Batches of copies of the loader's longest example (by its text), built with the loader's own
    collate but without iterating the loader: its order and the random state stay untouched.

    A collate may draw random numbers (masked-LM batches choose their masked tokens), from the global
    generators or from one of its own (minift/data/lm.py's `MLMCollate`): the state a checkpoint keeps
    is restored afterwards (`state.random_state_kept`), or the probes would move the run onto other
    masks, and a run would train differently for having been estimated."""
    examples = loader.dataset
    longest = max(examples, key=lambda e: len(str(e)))
    with state.random_state_kept(loader):
        return [loader.collate_fn([longest] * b) for b in batch_sizes]


def estimate(model: torch.nn.Module, loss_fn, loader, *, device: torch.device, autocast, precision: str,
             batch_size: int) -> MemoryEstimate:
    """The peak memory of a training step of ``model`` at ``batch_size`` examples per step (the
    longest example of ``loader`` repeated: an upper bound when batches are padded to their longest).

    The probes run in train mode under the run's autocast, with the random state restored afterwards
    (dropout draws masks), so that the run takes exactly the steps it would without them.
    """
    now = current_memory(device)  # before the probes: what they allocate is freed, but may stay resident
    probes = [_to(b, device) for b in probe_batches(loader)]
    devices = [device] if device.type in ("cuda", "mps") else []  # the CPU's state is always restored
    was_training = model.training
    model.train()
    counts = []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        for batch in probes:
            with autocast:  # entered per probe: autocast keeps its weight casts until the outermost exit,
                counts.append(count_step(model, loss_fn, batch))  # and each pass must make its own
    small, large = counts
    model.train(was_training)
    length = next((v.shape[1] for v in probes[0].values() if isinstance(v, torch.Tensor) and v.dim() == 2), 1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    factor, constant = heap_overhead(device)
    return MemoryEstimate(
        device=str(device), now=now, optimizer=2 * sum(p.numel() * 4 for p in trainable),  # m, v in fp32
        step=extrapolate(small, large, PROBE_BATCH_SIZES, batch_size), heap_factor=factor, heap_constant=constant,
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
    more = estimate.peak - estimate.now  # what the run will take on top of what the process holds
    if available is None or more <= available:
        return None
    return (f"warning: {estimate.describe()}; that is {gib(more)} more than now, but only {gib(available)} "
            f"is available on {estimate.device}. " + advice(estimate))


class OutOfMemory(RuntimeError):
    """An out-of-memory error of the device, with what to change."""
