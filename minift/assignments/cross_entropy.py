"""Assignment `cross-entropy`: the loss and the gradient you derive by hand (lesson 07)."""

from __future__ import annotations

import torch

from minift.assignments.base import Assignment, Item, Target

MODULE = "minift.losses"
# (weight?, ignore some rows?, label smoothing, reduction): the cases torch's cross_entropy covers.
CASES = ((False, False, 0.0, "mean"), (True, False, 0.0, "mean"), (False, True, 0.0, "sum"),
         (True, True, 0.1, "mean"), (False, False, 0.2, "none"))


def _inputs() -> dict:
    g = torch.Generator().manual_seed(9)
    target = torch.randint(0, 5, (12,), generator=g)
    ignored = target.clone()
    ignored[[1, 4, 7]] = -100
    return {"logits": torch.randn(12, 5, generator=g, dtype=torch.float64) * 2, "target": target,
            "target_ignored": ignored, "weight": torch.rand(5, generator=g, dtype=torch.float64) + 0.5,
            "g": torch.randn(12, generator=g, dtype=torch.float64)}


def _run(module, inputs):
    out = {}
    for n, (weighted, ignore, smoothing, reduction) in enumerate(CASES):
        z = inputs["logits"].clone().requires_grad_(True)
        target = inputs["target_ignored"] if ignore else inputs["target"]
        loss = module.cross_entropy(z, target, weight=inputs["weight"] if weighted else None,
                                    label_smoothing=smoothing, reduction=reduction)
        loss.backward(inputs["g"] if reduction == "none" else None)
        out[f"loss{n}"], out[f"grad{n}"] = loss.detach(), z.grad
    return out


def _pick(prefix):
    return lambda module, inputs: {k: v for k, v in _run(module, inputs).items() if k.startswith(prefix)}


def _diagnose(module, inputs, outputs, expected):
    got = outputs.get("grad0")
    if isinstance(got, torch.Tensor) and got.shape == expected["grad0"].shape:
        if torch.allclose(got * 12, expected["grad0"], atol=1e-9):
            return "the gradient of 'mean' is divided by the number of rows twice (or not at all elsewhere)"
        if torch.allclose(got, -expected["grad0"], atol=1e-9):
            return "the gradient has the wrong sign: it is p - onehot(t), not onehot(t) - p"
    return None


ASSIGNMENT = Assignment(
    name="cross-entropy",
    summary="softmax cross-entropy with class weights, ignore_index and label smoothing, and its backward",
    lesson="lessons/07-cross-entropy.md",
    targets=(
        Target(MODULE, "_CrossEntropy.forward", "Rows z (M, C), targets t (M,): loss_i = -sum_c q_c log p_c with "
               "p = softmax(z) (use log_softmax), q = (1 - eps) w_t onehot(t) + eps / C w; rows whose target is "
               "ignore_index give 0; reduce with _reduce(loss, reduction, normaliser) where the normaliser is "
               "the summed w_t of the kept rows. Save what backward needs on ctx."),
        Target(MODULE, "_CrossEntropy.backward", "dloss/dz = p * sum_k q_k - q per row (lesson 07), times the "
               "upstream gradient (per row for 'none', divided by the normaliser for 'mean'); 0 on ignored "
               "rows. Return the gradient for z and None for the five other inputs."),
    ),
    items=(
        Item("forward", MODULE, _inputs, _pick("loss"), "log p = z - logsumexp(z); 'mean' divides by the "
             "summed weights of the kept targets, not by M", tolerance=1e-10),
        Item("backward", MODULE, _inputs, _pick("grad"), "without weights or smoothing the gradient is "
             "(softmax(z) - onehot(t)) / N for 'mean'", tolerance=1e-10, diagnose=_diagnose),
    ),
)
