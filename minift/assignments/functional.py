"""Assignment `functional`: softmax, GELU and LayerNorm, forward and hand-derived backward (lesson 03)."""

from __future__ import annotations

import torch

from minift.assignments.base import Assignment, Item, Target

MODULE = "minift.nn.functional"


def _x() -> dict:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 7, 33, generator=g, dtype=torch.float64) * 3
    x[0, 0, :5] = torch.tensor([1000.0, 999.0, -1000.0, 0.0, 3.0], dtype=torch.float64)  # needs the max trick
    return {"x": x, "g": torch.randn(4, 7, 33, generator=g, dtype=torch.float64)}


def _forward_backward(fn):
    def run(module, inputs):
        x = inputs["x"].clone().requires_grad_(True)
        y = fn(module, x)
        y.backward(inputs["g"])
        return {"y": y.detach(), "grad_x": x.grad}
    return run


def _only(key, run):
    return lambda module, inputs: {key: run(module, inputs)[key]}


softmax_run = _forward_backward(lambda m, x: m.softmax(x, dim=-1))
gelu_run = _forward_backward(lambda m, x: m.gelu(x))


def _norm_inputs() -> dict:
    g = torch.Generator().manual_seed(4)
    return {"x": torch.randn(3, 5, 24, generator=g, dtype=torch.float64) * 2 + 1,
            "w": torch.randn(24, generator=g, dtype=torch.float64),
            "b": torch.randn(24, generator=g, dtype=torch.float64),
            "g": torch.randn(3, 5, 24, generator=g, dtype=torch.float64)}


def norm_run(module, inputs):
    x, w, b = (inputs[k].clone().requires_grad_(True) for k in ("x", "w", "b"))
    y = module.layer_norm(x, w, b, 1e-5)
    y.backward(inputs["g"])
    return {"y": y.detach(), "grad_x": x.grad, "grad_w": w.grad, "grad_b": b.grad}


def _softmax_diagnosis(module, inputs, outputs, expected):
    if not torch.isfinite(outputs.get("y", torch.zeros(1))).all():
        return "inf or NaN for large inputs: subtract each row's maximum before exp (it changes nothing else)"
    return None


ASSIGNMENT = Assignment(
    name="functional",
    summary="softmax, GELU and LayerNorm: forward and the backward you derive by hand",
    lesson="lessons/03-functional.md",
    targets=(
        Target(MODULE, "_Softmax.forward", "y = exp(x - max) / sum(exp(x - max)) along `dim`, computed in "
               "float32 at least (_compute_dtype); save y for backward (ctx.save_for_backward) and the dim."),
        Target(MODULE, "_Softmax.backward", "dx = y * (g - sum(g * y, dim)): the Jacobian-vector product of "
               "softmax, from the saved y only. Return (dx, None)."),
        Target(MODULE, "_Gelu.forward", "GELU(x) = x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2))); save x."),
        Target(MODULE, "_Gelu.backward", "d/dx [x Phi(x)] = Phi(x) + x * phi(x), phi(x) = exp(-x^2 / 2) / "
               "sqrt(2 pi); times the upstream gradient."),
        Target(MODULE, "_LayerNorm.forward", "Over the last dimension: mean, biased variance, xhat = (x - mean) "
               "/ sqrt(var + eps), y = xhat * weight + bias. Save what backward needs (xhat, 1/std, weight)."),
        Target(MODULE, "_LayerNorm.backward", "With gh = g * w: dx = (gh - mean(gh) - xhat * mean(gh * xhat)) / "
               "std per row; dw = sum over rows of g * xhat; db = sum over rows of g. Return (dx, dw, db, None)."),
    ),
    items=(
        Item("softmax-forward", MODULE, _x, _only("y", softmax_run), "each row must sum to 1; subtract the "
             "row maximum before exp", diagnose=_softmax_diagnosis),
        Item("softmax-backward", MODULE, _x, _only("grad_x", softmax_run), "dx = y * (g - (g * y).sum(dim, "
             "keepdim=True))"),
        Item("gelu-forward", MODULE, _x, _only("y", gelu_run), "the exact form with erf (BERT's), not the tanh "
             "approximation"),
        Item("gelu-backward", MODULE, _x, _only("grad_x", gelu_run), "Phi(x) + x * phi(x), times grad_y"),
        Item("layernorm-forward", MODULE, _norm_inputs, _only("y", norm_run), "biased variance (divide by C, "
             "not C - 1); eps inside the square root"),
        Item("layernorm-backward", MODULE, _norm_inputs,
             lambda m, i: {k: v for k, v in norm_run(m, i).items() if k != "y"},
             "dx has three terms (gh, its mean, xhat times mean(gh * xhat)), all divided by the std; "
             "dw and db sum over every row"),
    ),
)
