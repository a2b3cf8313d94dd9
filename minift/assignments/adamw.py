"""Assignment `adamw`: one AdamW update with decoupled weight decay and bias correction (lesson 08)."""

from __future__ import annotations

import torch

from minift.assignments.base import Assignment, Item, Target

MODULE = "minift.optim.adamw"
STEPS = 6


def _inputs() -> dict:
    g = torch.Generator().manual_seed(8)
    return {"p0": torch.randn(5, 4, generator=g, dtype=torch.float64),
            "grads": torch.randn(STEPS, 5, 4, generator=g, dtype=torch.float64)}


def _run(weight_decay):
    def run(module, inputs):
        p = torch.nn.Parameter(inputs["p0"].clone())
        opt = module.AdamW([p], lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
        trajectory = []
        for grad in inputs["grads"]:
            p.grad = grad.clone()
            opt.step()
            trajectory.append(p.detach().clone())
        return {"params": torch.stack(trajectory)}
    return run


def _reference_variant(inputs, weight_decay, coupled=False, bias_correction=True):
    """AdamW written out once more, with one known mistake switched on."""
    p = inputs["p0"].clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    lr, b1, b2, eps = 0.05, 0.9, 0.99, 1e-8
    out = []
    for t, grad in enumerate(inputs["grads"], 1):
        if coupled:
            grad = grad + weight_decay * p  # L2 regularisation: the decay goes through Adam's scaling
        else:
            p = p * (1 - lr * weight_decay)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        m_hat, v_hat = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
        out.append(p)
    return torch.stack(out)


def _diagnose(weight_decay):
    def diagnose(module, inputs, outputs, expected):
        got = outputs.get("params")
        if not isinstance(got, torch.Tensor) or got.shape != expected["params"].shape:
            return None
        if weight_decay and torch.allclose(got, _reference_variant(inputs, weight_decay, coupled=True), atol=1e-9):
            return ("weight decay was added to the gradient (L2, coupled): AdamW decays the weights directly, "
                    "p <- p - lr * wd * p, outside the Adam update (Loshchilov & Hutter, Alg. 2 line 12)")
        if torch.allclose(got, _reference_variant(inputs, weight_decay, bias_correction=False), atol=1e-9):
            return "no bias correction: divide m by (1 - beta1^t) and v by (1 - beta2^t) (Kingma & Ba, sec. 3)"
        return None
    return diagnose


ASSIGNMENT = Assignment(
    name="adamw",
    summary="AdamW: moments, bias correction and decoupled weight decay, one parameter at a time",
    lesson="lessons/08-adamw-and-clipping.md",
    targets=(
        Target(MODULE, "AdamW._update", "One parameter p with gradient p.grad, in place: state['step'] += 1; "
               "decay p by (1 - lr * wd); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr * m_hat / "
               "(sqrt(v_hat) + eps) with m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t). The moments are "
               "state['exp_avg'] and state['exp_avg_sq']."),
    ),
    items=(
        Item("adam", MODULE, _inputs, _run(0.0), "m and v are running averages of g and g^2; both start at 0, "
             "hence the bias correction", tolerance=1e-10, diagnose=_diagnose(0.0)),
        Item("decoupled-decay", MODULE, _inputs, _run(0.1), "the decay multiplies p by (1 - lr * wd) before the "
             "Adam step; it never enters m or v", tolerance=1e-10, diagnose=_diagnose(0.1)),
    ),
    notes=((f"\nThe items run {STEPS} steps in float64 and compare the parameter after every step "
           "(tolerance 1e-10), with lr = 0.05, betas = (0.9, 0.99), eps = 1e-8."),),
)
