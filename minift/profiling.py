"""Where a training step's time goes: the step in named phases, its profile sorted into kinds of work,
its FLOPs, and the machine's matmul peak (lesson 22; `benchmarks/profile_step.py` runs it on
MiniLM and GPT-2 small shapes, minift and transformers side by side).

A step runs in five phases, each a `torch.profiler.record_function` scope: data (the batch to the
device), forward, loss, backward, optimizer (step and zero_grad). The profiler records every aten op
with its parent; `breakdown` gives each op's *self* time (its time minus its children's) one kind:

- inside the loss, optimizer or data phase: that phase, whatever the op is;
- otherwise the op's own kind when its name has one (`op_kind`: aten::mm is a matmul, a
  NativeLayerNormBackward0 node is normalisation), else the kind of its nearest ancestor that has one
  (the aten::mul inside a dropout's backward is dropout), else "other" (residual adds, views, the
  autograd engine's bookkeeping, Python between ops).

Self times partition the phases' total time, so the kinds add up to the profiled step, to rounding.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

PHASES = ("data", "forward", "loss", "backward", "optimizer")
KINDS = ("matmul", "attention", "norm/act", "dropout", "cast", "embedding", "loss", "optimizer", "data",
         "other")
# Phases whose every op is of the phase's kind (a cast inside the loss is part of the loss's cost).
_PHASE_KINDS = ("loss", "optimizer", "data")

# Op names (aten ops and autograd nodes, without "aten::" or the "autograd::engine::evaluate_function: "
# prefix) by kind. A name ending in Backward0/Backward1 is looked up without that suffix, lower-cased.
_NAMES = {
    "matmul": ("addmm", "mm", "bmm", "matmul", "linear", "baddbmm", "addbmm", "_addmm_activation", "t"),
    "attention": ("scaled_dot_product_attention", "_scaled_dot_product_attention_math",
                  "_scaled_dot_product_flash_attention_for_cpu",
                  "_scaled_dot_product_flash_attention_for_cpu_backward", "_safe_softmax", "softmax",
                  "_softmax", "_softmax_backward_data", "safesoftmax", "scaleddotproductflashattentionforcpu"),
    "norm/act": ("layer_norm", "native_layer_norm", "native_layer_norm_backward", "nativelayernorm",
                 "gelu", "gelu_backward", "tanh", "tanh_backward", "relu", "threshold_backward", "silu",
                 "_layernorm", "_gelu", "_gelutanh"),
    "dropout": ("dropout", "native_dropout", "native_dropout_backward", "nativedropout", "bernoulli_",
                "bernoulli", "_dropout", "feature_dropout"),
    "cast": ("to", "_to_copy", "tocopy", "type_as"),  # copy_ is a cast only inside one (inherited)
    "embedding": ("embedding", "embedding_backward", "embedding_dense_backward", "index_select",
                  "embedding_renorm_"),
    "loss": ("cross_entropy_loss", "log_softmax", "_log_softmax", "_log_softmax_backward_data", "logsoftmax",
             "nll_loss", "nll_loss_nd", "nll_loss_forward", "nll_loss_backward", "nllloss", "_crossentropy",
             "mse_loss", "binary_cross_entropy_with_logits", "_bcewithlogits"),
}
_KIND_OF = {name.lower(): kind for kind, names in _NAMES.items() for name in names}
_NODE = "autograd::engine::evaluate_function: "


def op_kind(name: str) -> str | None:
    """The kind of an op or autograd node from its name alone; None for generic ops (add, view, mul)
    whose kind depends on where they run. `op_kind("aten::addmm") == "matmul"`,
    `op_kind("autograd::engine::evaluate_function: GeluBackward0") == "norm/act"`."""
    name = name.removeprefix(_NODE)
    name = name.removeprefix("aten::").removeprefix("torch::autograd::")
    for suffix in ("Backward0", "Backward1", "Backward"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return _KIND_OF.get(name.lower())


def phase(name: str):
    """A named scope of the step, seen by the profiler (one of PHASES)."""
    if name not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {name!r}")
    return record_function(name)


def breakdown(events) -> dict[str, float]:
    """Seconds per kind (every kind of KINDS, zeros included) from a profile's `prof.events()`.
    Events outside any phase (there should be none) count as "other"."""
    seconds = dict.fromkeys(KINDS, 0.0)
    for event in events:
        seconds[_event_kind(event)] += event.self_cpu_time_total / 1e6  # profiler times are in us
    return seconds


def _event_kind(event) -> str:
    top = phase_of(event)
    if top in _PHASE_KINDS:
        return top
    node = event
    while node is not None and node.cpu_parent is not None:  # the event, then its ancestors below the phase
        kind = op_kind(node.name)
        if kind is not None:
            return kind
        node = node.cpu_parent
    return "other"


def phase_of(event) -> str:
    """The name of the phase (the top-level scope) an event of the profile ran in."""
    while event.cpu_parent is not None:
        event = event.cpu_parent
    return event.name


def phase_total(events) -> float:
    """Seconds of the phases together: the inclusive time of the top-level events."""
    return sum(e.cpu_time_total for e in events if e.cpu_parent is None) / 1e6


def profile_step(step: Callable[[], object]) -> tuple[dict[str, float], float, float]:
    """Runs `step` once under the profiler: (seconds per kind, the phases' total seconds, the wall
    seconds of the profiled call). Profiling adds overhead per op, so time unprofiled steps for rates."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        step()
        wall = time.perf_counter() - t
    events = prof.events()
    return breakdown(events), phase_total(events), wall


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of `fn()` as torch counts them (matmuls, bmm, sdpa and their backward: 2 per multiply-add;
    elementwise work, normalisation and the optimizer count 0)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5, best_of: int = 5) -> float:
    """FLOP/s of an n x n by n x n matmul on this CPU in `dtype`: the best of `best_of` runs of
    `repeats` products (the best is the machine's capability; the others include interference)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: the kernel chosen, the pages touched
    best = float("inf")
    for _ in range(best_of):
        t = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * repeats / best


def _autocast(precision: str, device: torch.device):
    """bf16 autocast on ``device`` for "bf16", nothing for "fp32"."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def train_step(model, optimizer, batch: dict, labels: torch.Tensor, loss_fn: Callable, precision: str = "fp32",
               device: torch.device | str = "cpu") -> Callable[[], torch.Tensor]:
    """One training step in the five phases, as minift/train/loop.py takes it: forward and loss under
    autocast (bf16) or none (fp32), backward outside it, the optimizer step, zero_grad.
    `loss_fn(logits, labels)` is the library's own loss; the model is called without labels so that
    the loss is its own phase."""
    device = torch.device(device)
    autocast = _autocast(precision, device)

    def step() -> torch.Tensor:
        with phase("data"):
            inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            target = labels.to(device, non_blocking=True)
        with autocast:
            with phase("forward"):
                logits = model(**inputs).logits
            with phase("loss"):
                loss = loss_fn(logits, target)
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def eval_step(model, batch: dict, precision: str = "fp32", device: torch.device | str = "cpu") -> Callable[[], torch.Tensor]:
    """One evaluation step, as minift's evaluation runs it: the model in eval mode (no dropout),
    forward only, no autograd record (`torch.no_grad`), under autocast for bf16. Returns the logits."""
    device = torch.device(device)
    autocast = _autocast(precision, device)

    def step() -> torch.Tensor:
        model.eval()
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.no_grad(), autocast:
            return model(**inputs).logits

    return step


def cpu_identity() -> dict:
    """What the figures were measured on: torch's vector level, the CPU's model name, the flags that
    decide bf16 speed (avx512_bf16, amx_bf16: bf16 multiply units; without them bf16 is emulated), and
    torch's intra-op thread count."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return {"capability": torch.backends.cpu.get_cpu_capability(), "model": model,
            "flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")},
            "threads": torch.get_num_threads(), "cores": os.cpu_count()}
