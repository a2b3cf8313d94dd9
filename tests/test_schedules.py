"""minift.optim.schedules against transformers' schedules, step by step, and against their closed forms."""

import itertools
import math

import pytest
import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from minift.optim import schedules
from minift.optim.schedules import (
    constant_with_warmup,
    cosine_with_warmup,
    linear_with_warmup,
    make_scheduler,
)

REFERENCE = {
    "linear": (linear_with_warmup, get_linear_schedule_with_warmup),
    "cosine": (cosine_with_warmup, get_cosine_schedule_with_warmup),
    "constant": (constant_with_warmup, get_constant_schedule_with_warmup),
}
SHAPES = [(10, 100), (0, 50), (7, 7), (3, 40), (1, 1)]  # (warmup_steps, total_steps), edge cases included


def two_group_optimizer(lrs=(2e-5, 3e-4)) -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    return torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)])


def reference_scheduler(name: str, optimizer, warmup_steps: int, total_steps: int):
    factory = REFERENCE[name][1]
    if name == "constant":
        return factory(optimizer, num_warmup_steps=warmup_steps)
    return factory(optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def lrs_over(optimizer, scheduler, steps: int) -> list[list[float]]:
    """The lr of every group before each of `steps` optimizer steps (what each step actually uses)."""
    seen = []
    for _ in range(steps):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("warmup_steps, total_steps", SHAPES)
def test_pure_function_matches_transformers_at_every_step(name, warmup_steps, total_steps):
    # transformers' LambdaLR multiplier times max_lr is the lr; min_lr = 0 is their only floor.
    ours = REFERENCE[name][0]
    max_lr = 5e-4
    optimizer = two_group_optimizer((max_lr,))
    scheduler = reference_scheduler(name, optimizer, warmup_steps, total_steps)
    # Cosine in transformers climbs again after total_steps (the cosine continues); the contract
    # here is min_lr after the end, so compare up to total_steps there and beyond it for the others.
    last = total_steps if name == "cosine" else total_steps + 10
    if name == "cosine" and warmup_steps == total_steps:
        last -= 1  # no decay phase: transformers gives max_lr at step total_steps, we the end value 0
    for step, (ref_lr,) in enumerate(lrs_over(optimizer, scheduler, last + 1)):
        lr = ours(step, max_lr, 0.0, warmup_steps, total_steps)
        assert abs(lr - ref_lr) <= 1e-10 * max_lr, f"step {step}: {lr} vs {ref_lr}"  # float64 math


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("warmup_steps, total_steps", SHAPES)
def test_make_scheduler_matches_transformers(name, warmup_steps, total_steps):
    ours_opt, ref_opt = two_group_optimizer(), two_group_optimizer()
    ours = make_scheduler(ours_opt, name, warmup_steps, total_steps)
    ref = reference_scheduler(name, ref_opt, warmup_steps, total_steps)
    steps = total_steps + 1  # through the last step; cosine past it differs on purpose (see above)
    if name == "cosine" and warmup_steps == total_steps:
        steps -= 1  # the degenerate no-decay case, see above
    for step, (a, b) in enumerate(zip(lrs_over(ours_opt, ours, steps), lrs_over(ref_opt, ref, steps))):
        assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-10 * 3e-4, f"step {step}: {a} vs {b}"


@pytest.mark.parametrize("fn", [linear_with_warmup, cosine_with_warmup])
@pytest.mark.parametrize("warmup_steps, total_steps", [(10, 100), (0, 30), (4, 9)])
def test_min_lr_end_points_and_shape(fn, warmup_steps, total_steps):
    max_lr, min_lr = 1e-3, 1e-4
    lr = [fn(s, max_lr, min_lr, warmup_steps, total_steps) for s in range(total_steps + 20)]
    assert lr[0] == (0.0 if warmup_steps else max_lr)  # warmup starts from 0
    assert abs(lr[warmup_steps] - max_lr) <= 1e-15  # the peak is exactly at the end of warmup
    assert all(abs(x - min_lr) <= 1e-15 for x in lr[total_steps:])  # min_lr at the end and after
    decay = lr[warmup_steps : total_steps + 1]
    assert all(a >= b for a, b in itertools.pairwise(decay)), "the decay phase must never go up"
    warm = lr[: warmup_steps + 1]
    assert all(a < b for a, b in itertools.pairwise(warm)), "warmup must rise strictly"


@pytest.mark.parametrize("warmup_steps, total_steps", [(10, 110), (0, 40), (6, 26)])
def test_min_lr_against_closed_form(warmup_steps, total_steps):
    # Closed forms written independently of the module: in the decay phase, with x = progress in [0, 1],
    #   linear: lr = max - (max - min) x          cosine: lr = min + (max - min) cos^2(pi x / 2)
    # (the half-angle identity (1 + cos(pi x)) / 2 = cos^2(pi x / 2)); both pass through
    # (max + min) / 2 at the middle of the decay.
    max_lr, min_lr = 2e-3, 5e-4
    for step in range(warmup_steps, total_steps + 1):
        x = (step - warmup_steps) / (total_steps - warmup_steps)
        linear = max_lr - (max_lr - min_lr) * x
        cosine = min_lr + (max_lr - min_lr) * math.cos(math.pi * x / 2) ** 2
        assert abs(linear_with_warmup(step, max_lr, min_lr, warmup_steps, total_steps) - linear) <= 1e-15
        assert abs(cosine_with_warmup(step, max_lr, min_lr, warmup_steps, total_steps) - cosine) <= 1e-15
    middle = warmup_steps + (total_steps - warmup_steps) // 2  # exact middle: decay lengths are even
    for fn in (linear_with_warmup, cosine_with_warmup):
        assert abs(fn(middle, max_lr, min_lr, warmup_steps, total_steps) - (max_lr + min_lr) / 2) <= 1e-15
    for step in range(warmup_steps):
        assert (
            abs(
                cosine_with_warmup(step, max_lr, min_lr, warmup_steps, total_steps)
                - max_lr * step / warmup_steps
            )
            <= 1e-15
        )


def test_make_scheduler_min_lr_ratio():
    optimizer = two_group_optimizer((1e-3, 1e-2))
    scheduler = make_scheduler(optimizer, "cosine", warmup_steps=5, total_steps=25, min_lr_ratio=0.1)
    seen = lrs_over(optimizer, scheduler, 31)
    for step, lrs in enumerate(seen):
        for lr, base in zip(lrs, (1e-3, 1e-2)):
            assert abs(lr - cosine_with_warmup(step, base, 0.1 * base, 5, 25)) <= 1e-10 * base
    assert seen[-1] == pytest.approx([1e-4, 1e-3], rel=1e-12)  # min_lr = ratio x each group's lr


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_scheduler_resume_is_exact(name):
    # Save optimizer + scheduler mid-run, rebuild both from scratch, load: the lrs continue exactly.
    optimizer = two_group_optimizer()
    scheduler = make_scheduler(optimizer, name, 4, 30, min_lr_ratio=0.05)
    straight = lrs_over(optimizer, scheduler, 35)

    optimizer = two_group_optimizer()
    scheduler = make_scheduler(optimizer, name, 4, 30, min_lr_ratio=0.05)
    first = lrs_over(optimizer, scheduler, 13)
    saved = (optimizer.state_dict(), scheduler.state_dict())
    optimizer = two_group_optimizer()
    scheduler = make_scheduler(optimizer, name, 4, 30, min_lr_ratio=0.05)
    optimizer.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    assert first + lrs_over(optimizer, scheduler, 22) == straight


def test_module_is_reachable_as_documented():
    import minift.optim

    assert minift.optim.schedules.cosine_with_warmup is schedules.cosine_with_warmup


@pytest.mark.parametrize(
    "args, message",
    [
        ((-1, 1.0, 0.0, 2, 10), r"step must be >= 0, got -1"),
        ((1, 1.0, 2.0, 2, 10), r"0 <= min_lr <= max_lr, got min_lr=2\.0, max_lr=1\.0"),
        ((1, 1.0, -0.1, 2, 10), r"min_lr"),
        ((1, 1.0, 0.0, 12, 10), r"warmup_steps=12, total_steps=10"),
        ((1, 1.0, 0.0, -1, 10), r"warmup_steps=-1"),
        ((1, 1.0, 0.0, 0, 0), r"total_steps >= 1"),
    ],
)
@pytest.mark.parametrize("fn", [linear_with_warmup, cosine_with_warmup, constant_with_warmup])
def test_schedule_errors(fn, args, message):
    with pytest.raises(ValueError, match=message):
        fn(*args)


@pytest.mark.parametrize("args", [(1.5, 1.0, 0.0, 2, 10), (1, 1.0, 0.0, 2.0, 10), (1, 1.0, 0.0, 2, "10")])
@pytest.mark.parametrize("fn", [linear_with_warmup, cosine_with_warmup, constant_with_warmup])
def test_schedule_rejects_non_integer_steps(fn, args):
    with pytest.raises(TypeError, match=r"must be an integer|must be integers"):
        fn(*args)


def test_make_scheduler_errors():
    with pytest.raises(
        ValueError, match=r"unknown schedule 'cosin'; choose one of \['constant', 'cosine', 'inverse_sqrt', 'linear'\]"
    ):
        make_scheduler(two_group_optimizer(), "cosin", 1, 10)
    with pytest.raises(ValueError, match=r"min_lr_ratio must be in \[0, 1\], got 1\.5"):
        make_scheduler(two_group_optimizer(), "linear", 1, 10, min_lr_ratio=1.5)
    with pytest.raises(ValueError, match=r"warmup_steps=20, total_steps=10"):  # at construction time
        make_scheduler(two_group_optimizer(), "linear", 20, 10)


@pytest.mark.parametrize("warmup_steps", [0, 1, 4, 40])
def test_inverse_sqrt_matches_transformers_and_the_papers_formula(warmup_steps):
    """Sec. 5.3: lrate = d_model^-0.5 min(step^-0.5, step warmup^-1.5), divided by its peak; and
    transformers' get_inverse_sqrt_schedule (timescale = warmup, or 10,000 without warmup) step by step."""
    from transformers import get_inverse_sqrt_schedule

    from minift.optim.schedules import inverse_sqrt_with_warmup, transformer_peak_lr

    max_lr, total = 7e-4, 300
    optimizer = two_group_optimizer((max_lr,))
    theirs = [lr[0] for lr in lrs_over(optimizer, get_inverse_sqrt_schedule(optimizer, warmup_steps), total)]
    ours = [inverse_sqrt_with_warmup(step, max_lr, 0.0, warmup_steps, total) for step in range(total)]
    assert ours == pytest.approx(theirs, rel=1e-12, abs=0)
    if warmup_steps:
        d_model = 512
        paper = [d_model ** -0.5 * min(step ** -0.5, step * warmup_steps ** -1.5) for step in range(1, total)]
        peak = transformer_peak_lr(d_model, warmup_steps)
        assert [inverse_sqrt_with_warmup(s, peak, 0.0, warmup_steps, total) for s in range(1, total)] == \
            pytest.approx(paper, rel=1e-12)
    assert transformer_peak_lr(512, 4000) == pytest.approx(6.99e-4, rel=1e-3)  # the base model's peak
