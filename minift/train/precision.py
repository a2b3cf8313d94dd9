"""Mixed precision: the autocast context for `--precision`, and dynamic loss scaling written by hand.

Lesson: `lessons/20-mixed-precision.md` (the float formats bit by bit, what autocast casts, why
float16 needs loss scaling and bfloat16 does not, and the scaler's state machine).

Mixed-precision training (Micikevicius et al. 2018, "Mixed Precision Training", sec. 3) keeps the
weights and the optimizer in float32 and runs the matrix products in 16 bits. `torch.autocast` does
the casting op by op. float16 has a 5-bit exponent: gradients below 2^-24 ~ 6e-8 round to zero, so
the loss is multiplied by a large factor S before backward and the gradients divided by S before the
step (sec. 3.2). bfloat16 keeps float32's 8-bit exponent, so it needs no scaling.

`LossScaler` makes the decisions `torch.amp.GradScaler` makes (same scale after every step, same
skipped steps, same parameters; `tests/test_precision.py` runs both side by side), with its state
as plain numbers that go into a JSON file.
"""

from __future__ import annotations

import math
import warnings
from contextlib import AbstractContextManager, nullcontext

import torch

from minift.train.device import DEVICE_TYPES

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_dtype(device: torch.device | str, precision: str) -> torch.dtype | None:
    """The 16-bit dtype the matmuls of `--precision` run in on `device`; None for fp32.

    bf16: CPU, CUDA GPUs with bfloat16 tensor cores (compute capability 8.0, Ampere, and later; any
    ROCm GPU), MPS on macOS 14 or later. fp16: CUDA only. Anything else is a ValueError that says
    what to use instead.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"--precision {precision} on {device}: minift runs on cpu, cuda and mps")
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"--precision fp16 needs a CUDA device, but the device is {device.type}: float16 "
                         "training with loss scaling is a GPU recipe. Use --precision bf16 (no loss "
                         "scaling needed) or fp32")
    if precision == "bf16" and device.type == "cuda" and not _cuda_has_bf16(device):
        raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} (compute capability "
                         f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}) has no bfloat16 "
                         "tensor cores, so torch would emulate bf16, no faster than fp32; use --precision "
                         "fp16 (with loss scaling) or fp32")
    if precision == "bf16" and device.type == "mps" and not _mps_has_bf16():
        raise ValueError("--precision bf16 on mps needs macOS 14 or later (bfloat16 arrived in Metal with "
                         "macOS Sonoma); use --precision fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _cuda_has_bf16(device: torch.device) -> bool:
    """Native bfloat16 on this GPU. torch.cuda.is_bf16_supported() asks about the *current* device and,
    by default, also says yes when bf16 only runs emulated (pre-Ampere); neither is the question here."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def _mps_has_bf16() -> bool:
    """bfloat16 on Apple GPUs needs macOS 14. (Where MPS is absent the version cannot be asked; the
    device was then refused already by `select_device`.)"""
    return not torch.backends.mps.is_available() or torch.backends.mps.is_macos_or_newer(14, 0)


def autocast_context(device: torch.device | str, precision: str) -> AbstractContextManager:
    """The context the forward pass (and the loss) runs in for `--precision`.

    "fp32": nothing changes. "bf16": torch.autocast to bfloat16 on CPU, CUDA or MPS. "fp16":
    torch.autocast to float16, CUDA only, and it needs a LossScaler (see `make_loss_scaler`).
    Which device supports which dtype: `autocast_dtype`.
    """
    device = torch.device(device)
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return nullcontext()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        context = torch.autocast(device.type, dtype=dtype)
    if not getattr(context, "_enabled", True):
        # torch.autocast only warns and disables itself when it cannot run (e.g. CUDA present but
        # unusable): the run would silently train in float32, so it is an error here.
        reason = caught[0].message if caught else "it disabled itself"
        raise ValueError(f"--precision {precision} on {device.type}: torch.autocast refused it: {reason}")
    for warning in caught:  # anything else torch said is passed on unchanged
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return context


def make_loss_scaler(precision: str, **kwargs: float) -> LossScaler:
    """The scaler for `--precision`: enabled for fp16 only (bf16 and fp32 have float32's range)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return LossScaler(enabled=precision == "fp16", **kwargs)


def _float32(x: float) -> float:
    """x rounded to the nearest float32 (inf past its range): GradScaler keeps the scale in float32."""
    return torch.tensor(x, dtype=torch.float32).item()


# The scaler's state per optimizer between two update() calls, as in GradScaler: gradients are
# unscaled at most once, the optimizer steps at most once.
READY, UNSCALED, STEPPED = "ready", "unscaled", "stepped"


class LossScaler:
    """Dynamic loss scaling (Micikevicius et al. 2018, sec. 3.2), step by step:

        scaler.scale(loss).backward()    gradients come out S times larger (small ones survive fp16)
        scaler.unscale_(optimizer)       g <- g / S, and note whether any g is inf or NaN (optional:
                                         step() does it; call it first to clip the true gradients)
        scaler.step(optimizer)           optimizer.step(), unless a gradient was inf/NaN: then skip
        scaler.update()                  overflow: S <- S * backoff_factor and restart the count;
                                         growth_interval clean steps in a row: S <- S * growth_factor

    The largest S that does not overflow wastes the fewest small gradients, and it changes during
    training; this finds it by trial, at the cost of one skipped step per overflow.
    With enabled=False every call is a pass-through (scale 1, the optimizer always steps).
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ) -> None:
        _check_factors(init_scale, growth_factor, backoff_factor, growth_interval)
        self.enabled = enabled
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self._scale = _float32(init_scale)
        self._growth_tracker = 0  # clean steps in a row since the last growth or overflow
        self._stage: dict[int, str] = {}  # id(optimizer) -> READY / UNSCALED / STEPPED
        self._found_inf: dict[int, bool] = {}  # id(optimizer) -> an inf/NaN gradient this step

    def get_scale(self) -> float:
        return self._scale if self.enabled else 1.0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """loss * S, with S a float32 scalar as in GradScaler (so an fp32 loss gives the same bits)."""
        if not self.enabled:
            return loss
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"LossScaler.scale expects the loss tensor, got {type(loss).__name__}")
        return loss * torch.tensor(self._scale, dtype=torch.float32, device=loss.device)

    @torch.no_grad()
    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide every gradient of `optimizer` by S in place, once per step; record inf/NaN."""
        if not self.enabled:
            return
        stage = self._stage.get(id(optimizer), READY)
        if stage == UNSCALED:
            raise RuntimeError("LossScaler.unscale_(): already called for this optimizer since the last "
                               "update(); the gradients would be divided by the scale twice")
        if stage == STEPPED:
            raise RuntimeError("LossScaler.unscale_(): called after step(); call update() first")
        if self._scale == 0.0:
            raise RuntimeError("LossScaler: the loss scale has fallen to 0 after overflow upon overflow: "
                               "the gradients are inf/NaN whatever the scale, so the forward pass itself "
                               "overflows (check the loss and the learning rate)")
        grads = _gradients(optimizer)
        if not grads:
            raise RuntimeError("LossScaler.unscale_(): no parameter of the optimizer has a gradient; call "
                               "scaler.scale(loss).backward() first")
        # 1/S computed in float64 and rounded once to float32, then a multiply: GradScaler's arithmetic
        # (for a power-of-two S it is exactly a division by S).
        inv_scale = _float32(1.0 / self._scale)
        # One 0-d flag per gradient, reduced on the device and read once: one GPU sync per step, not one
        # per tensor.
        flags = [torch.isfinite(g).all().logical_not().to(grads[0].device) for g in grads]
        for grad in grads:
            if inv_scale != 1.0:
                grad.mul_(torch.tensor(inv_scale, dtype=torch.float32, device=grad.device))
        found_inf = bool(torch.stack(flags).any())
        self._found_inf[id(optimizer)] = found_inf
        self._stage[id(optimizer)] = UNSCALED

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """optimizer.step() on unscaled gradients unless one was inf/NaN; True when the step was taken.

        (GradScaler returns optimizer.step()'s return value instead; the bool tells a loop whether to
        advance the learning-rate schedule and lets it count skipped steps.)
        """
        if not self.enabled:
            optimizer.step()
            return True
        if self._stage.get(id(optimizer), READY) == STEPPED:
            raise RuntimeError("LossScaler.step(): already called for this optimizer since the last update()")
        if self._stage.get(id(optimizer), READY) == READY:
            self.unscale_(optimizer)
        self._stage[id(optimizer)] = STEPPED
        if self._found_inf[id(optimizer)]:
            return False  # the parameters keep their values: one lost step, not a NaN model
        optimizer.step()
        return True

    def update(self) -> None:
        """Adjust S from what this step's gradients showed (all optimizers stepped since last update)."""
        if not self.enabled:
            return
        if not self._found_inf:
            raise RuntimeError("LossScaler.update(): no gradients were checked since the last update(); "
                               "call step(optimizer) (or unscale_) first")
        if any(self._found_inf.values()):
            # Overflow: S was too large. Shrink it; the next growth needs growth_interval clean steps.
            self._scale = _float32(self._scale * self.backoff_factor)
            self._growth_tracker = 0
        elif self._growth_tracker + 1 == self.growth_interval:
            # A long run without overflow: S may be smaller than it could be, try a larger one. A scale
            # past float32's range would be inf; GradScaler then keeps the old one, and so do we.
            grown = _float32(self._scale * self.growth_factor)
            if math.isfinite(grown):
                self._scale = grown
            self._growth_tracker = 0
        else:
            self._growth_tracker += 1
        self._stage.clear()
        self._found_inf.clear()

    def state_dict(self) -> dict[str, float | int]:
        """Plain numbers (JSON-able), with GradScaler's keys, so either can load the other's state.
        Empty when disabled, as GradScaler's. Take it after update(), between two steps."""
        if not self.enabled:
            return {}
        return {
            "scale": self._scale,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "_growth_tracker": self._growth_tracker,
        }

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        """Resume from `state_dict()` (ours, or a torch GradScaler's); a no-op when disabled."""
        if not self.enabled:
            return
        keys = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
        missing = [k for k in keys if k not in state] if isinstance(state, dict) else list(keys)
        if missing:
            raise ValueError(f"LossScaler.load_state_dict: missing key(s) {', '.join(missing)} (an empty "
                             "state comes from a disabled scaler)")
        _check_factors(state["scale"], state["growth_factor"], state["backoff_factor"], state["growth_interval"])
        tracker = state["_growth_tracker"]
        if not isinstance(tracker, int) or isinstance(tracker, bool) or tracker < 0:
            raise ValueError(f"LossScaler.load_state_dict: _growth_tracker must be an integer >= 0, got {tracker!r}")
        self._scale = _float32(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = state["growth_interval"]
        self._growth_tracker = tracker


def _gradients(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The gradients the optimizer will use; float16 and sparse ones are refused by name."""
    grads = []
    for g, group in enumerate(optimizer.param_groups):
        for i, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            where = f"parameter {i} of param group {g} (shape {list(p.shape)})"
            if p.grad.dtype == torch.float16:
                # Keep float32 weights and let autocast make the 16-bit copies: float16 weights cannot
                # hold small updates (w + lr*g == w), which is why mixed precision keeps fp32 masters.
                raise ValueError(f"LossScaler: {where} has a float16 gradient; keep the model's weights in "
                                 "float32 (autocast casts them for each op), as GradScaler requires")
            if p.grad.is_sparse:
                raise ValueError(f"LossScaler: {where} has a sparse gradient, which LossScaler does not handle")
            grads.append(p.grad)
    return grads


def _check_factors(init_scale: float, growth_factor: float, backoff_factor: float, growth_interval: int) -> None:
    def number(x: object) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not number(init_scale) or init_scale <= 0:
        raise ValueError(f"LossScaler: the scale must be a finite number > 0, got {init_scale!r}")
    if not number(growth_factor) or growth_factor <= 1:
        raise ValueError(f"LossScaler: growth_factor must be > 1, got {growth_factor!r}")
    if not number(backoff_factor) or not 0 < backoff_factor < 1:
        raise ValueError(f"LossScaler: backoff_factor must be in (0, 1), got {backoff_factor!r}")
    if not isinstance(growth_interval, int) or isinstance(growth_interval, bool) or growth_interval < 1:
        raise ValueError(f"LossScaler: growth_interval must be an integer >= 1, got {growth_interval!r}")
