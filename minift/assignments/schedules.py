"""Assignment `schedules`: linear warmup, then linear or cosine decay (lesson 09)."""

from __future__ import annotations

import torch

from minift.assignments.base import Assignment, Item, Target

MODULE = "minift.optim.schedules"
CASES = ((3e-4, 0.0, 10, 50), (1e-3, 1e-5, 0, 20), (5e-5, 5e-6, 7, 7), (2e-2, 0.0, 1, 9))


def _curves(fn_name):
    def run(module, inputs):
        fn = getattr(module, fn_name)
        out = {}
        for n, (max_lr, min_lr, warmup, total) in enumerate(CASES):
            out[f"case{n}"] = torch.tensor([fn(s, max_lr, min_lr, warmup, total) for s in range(total + 3)],
                                           dtype=torch.float64)
        return out
    return run


def _off_by_one(module, inputs, outputs, expected):
    """A warmup that starts one step late or early: lr(s) = max_lr * (s +- 1) / warmup_steps."""
    for shift in (1, -1):
        matches = []
        for n, (max_lr, _, warmup, _) in enumerate(CASES):
            got = outputs.get(f"case{n}")
            if warmup == 0 or not isinstance(got, torch.Tensor) or got.shape != expected[f"case{n}"].shape:
                continue
            steps = torch.arange(warmup, dtype=torch.float64)
            matches.append(torch.allclose(got[:warmup], max_lr * (steps + shift) / warmup, rtol=0, atol=1e-12))
        if matches and all(matches):
            return (f"off by one in the warmup: your lr at step s is the reference's at step s {shift:+d}; "
                    "the warmup gives max_lr * step / warmup_steps, 0 at step 0 and max_lr at warmup_steps")
    return None


ASSIGNMENT = Assignment(
    name="schedules",
    summary="learning-rate schedules: linear warmup, then linear or cosine decay to min_lr",
    lesson="lessons/09-schedules.md",
    targets=(
        Target(MODULE, "_warmup", "max_lr * step / warmup_steps: 0 at step 0, max_lr at step warmup_steps."),
        Target(MODULE, "_progress", "The fraction of the decay done: 0 at warmup_steps, 1 at total_steps."),
        Target(MODULE, "linear_with_warmup", "Keep the _check call. Warmup below warmup_steps; min_lr from "
               "total_steps on; in between a straight line from max_lr down to min_lr."),
        Target(MODULE, "cosine_with_warmup", "Keep the _check call. Warmup, then min_lr + (max_lr - min_lr) * (1 "
               "+ cos(pi * progress)) / 2; min_lr from total_steps on."),
    ),
    items=(
        Item("linear", MODULE, dict, _curves("linear_with_warmup"),
             "warmup is max_lr * step / warmup_steps; the decay reaches min_lr exactly at total_steps",
             tolerance=1e-12, diagnose=_off_by_one),
        Item("cosine", MODULE, dict, _curves("cosine_with_warmup"),
             "half a cosine period from max_lr (progress 0) to min_lr (progress 1)",
             tolerance=1e-12, diagnose=_off_by_one),
    ),
)
