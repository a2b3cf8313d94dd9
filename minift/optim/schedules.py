"""Learning-rate schedules as pure functions of the step, and the wrapper that drives an optimizer.

Each schedule warms up linearly from 0 (step 0 -> lr 0, step `warmup_steps` -> `max_lr`), then decays
to `min_lr` at `total_steps` and stays there: linearly (BERT, Devlin et al. 2019, sec. A.2), along a
half cosine (SGDR, Loshchilov & Hutter 2017, eq. 5, without restarts), or not at all (constant);
or, the original Transformer's, as the inverse square root of the step (Vaswani et al. 2017, sec. 5.3).
With `min_lr = 0` they equal `transformers`' `get_*_schedule_with_warmup` and `get_inverse_sqrt_schedule`
(`tests/test_schedules.py`).
`make_scheduler` turns one into a `torch.optim.lr_scheduler.LambdaLR`; the lesson is
`lessons/09-schedules.md`.
"""

import math
from numbers import Integral

import torch

# All three share one signature so that `make_scheduler` can treat them alike; the constant
# schedule accepts `min_lr` and `total_steps` for that reason and checks them, but does not use them.


def _check(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> None:
    if not isinstance(step, Integral):
        raise TypeError(f"step must be an integer, got {step!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0 <= min_lr <= max_lr:
        raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if not (isinstance(warmup_steps, Integral) and isinstance(total_steps, Integral)):
        raise TypeError(
            f"warmup_steps and total_steps must be integers, got {warmup_steps!r}, {total_steps!r}"
        )
    if not 0 <= warmup_steps <= total_steps or total_steps < 1:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, "
            f"got warmup_steps={warmup_steps}, total_steps={total_steps}"
        )


def _warmup(step: int, max_lr: float, warmup_steps: int) -> float:
    # Early on, Adam's second-moment estimate rests on few gradients and the randomly initialised head
    # sends large ones; a small lr for the first steps keeps those updates from wrecking the
    # pretrained weights (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate", sec. 3).
    return max_lr * step / warmup_steps


def _progress(step: int, warmup_steps: int, total_steps: int) -> float:
    """Fraction of the decay phase done: 0 at the end of warmup, 1 at total_steps."""
    return (step - warmup_steps) / (total_steps - warmup_steps)


def linear_with_warmup(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to max_lr, then a straight line down to min_lr at total_steps; min_lr after."""
    _check(step, max_lr, min_lr, warmup_steps, total_steps)
    if step < warmup_steps:
        return _warmup(step, max_lr, warmup_steps)
    if step >= total_steps:
        return min_lr
    remaining = (total_steps - step) / (total_steps - warmup_steps)  # 1 - progress, 1 -> 0
    return min_lr + (max_lr - min_lr) * remaining


def cosine_with_warmup(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to max_lr, then half a cosine period down to min_lr at total_steps; min_lr after.

    lr = min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2: flat at both ends of the decay,
    steepest in the middle (SGDR, eq. 5).
    """
    _check(step, max_lr, min_lr, warmup_steps, total_steps)
    if step < warmup_steps:
        return _warmup(step, max_lr, warmup_steps)
    if step >= total_steps:
        return min_lr
    return min_lr + (max_lr - min_lr) * 0.5 * (
        1.0 + math.cos(math.pi * _progress(step, warmup_steps, total_steps))
    )


def constant_with_warmup(
    step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int
) -> float:
    """Linear warmup to max_lr, then max_lr for ever (min_lr and total_steps are checked, not used)."""
    _check(step, max_lr, min_lr, warmup_steps, total_steps)
    if step < warmup_steps:
        return _warmup(step, max_lr, warmup_steps)
    return max_lr


def inverse_sqrt_with_warmup(
    step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int
) -> float:
    """Linear warmup to max_lr, then max_lr * sqrt(warmup_steps / step): the original Transformer's
    schedule (Vaswani et al. 2017, sec. 5.3, eq. 3),

        lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5),

    divided by its peak, d_model^-0.5 * warmup_steps^-0.5, reached at step = warmup_steps (so max_lr
    is that peak: `transformer_peak_lr`). It never reaches zero: total_steps and min_lr are checked,
    not used. Without warmup the decay runs on a timescale of 10,000 steps, max_lr * sqrt(10000 /
    (step + 10000)), as transformers' `get_inverse_sqrt_schedule` (whose `timescale` this is)."""
    _check(step, max_lr, min_lr, warmup_steps, total_steps)
    if step < warmup_steps:
        return _warmup(step, max_lr, warmup_steps)
    timescale = warmup_steps or 10_000
    return max_lr * math.sqrt(timescale / (step + timescale - warmup_steps))


def transformer_peak_lr(d_model: int, warmup_steps: int) -> float:
    """The top of sec. 5.3's schedule, d_model^-0.5 * warmup_steps^-0.5: the --lr that makes
    `inverse_sqrt_with_warmup` the paper's formula (7.0e-4 for the base model's 512 and 4000)."""
    return d_model ** -0.5 * warmup_steps ** -0.5


SCHEDULES = {"linear": linear_with_warmup, "cosine": cosine_with_warmup, "constant": constant_with_warmup,
             "inverse_sqrt": inverse_sqrt_with_warmup}


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR that sets each group's lr to (its initial lr) x schedule(step) with max_lr = 1.

    Call `scheduler.step()` once after each `optimizer.step()`. `min_lr_ratio` is min_lr / max_lr.
    The scheduler's state_dict (the step count) plus the optimizer's restore it exactly on resume.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    schedule = SCHEDULES[name]
    _check(0, 1.0, min_lr_ratio, warmup_steps, total_steps)  # fail now, not at the first step()

    def multiplier(step: int) -> float:
        return schedule(step, 1.0, min_lr_ratio, warmup_steps, total_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
