"""Assignment `lora`: the low-rank update, its forward and its merge into one matrix (lesson 19)."""

from __future__ import annotations

import torch

from minift.assignments.base import Assignment, Item, Target

MODULE = "minift.peft.lora"


def _inputs() -> dict:
    g = torch.Generator().manual_seed(14)
    return {"W": torch.randn(6, 10, generator=g), "b": torch.randn(6, generator=g),
            "A": torch.randn(4, 10, generator=g), "B": torch.randn(6, 4, generator=g),
            "x": torch.randn(3, 5, 10, generator=g), "g": torch.randn(3, 5, 6, generator=g)}


def _lora(module, inputs):
    base = torch.nn.Linear(10, 6)
    with torch.no_grad():
        base.weight.copy_(inputs["W"])
        base.bias.copy_(inputs["b"])
    layer = module.LoRALinear(base, r=4, alpha=8.0)
    with torch.no_grad():
        layer.lora_A.copy_(inputs["A"])
        layer.lora_B.copy_(inputs["B"])
    return layer.eval()


def _forward(module, inputs):
    layer = _lora(module, inputs)
    y = layer(inputs["x"])
    y.backward(inputs["g"])
    return {"y": y.detach(), "grad_A": layer.lora_A.grad, "grad_B": layer.lora_B.grad}


def _merge(module, inputs):
    layer = _lora(module, inputs)
    delta = layer.delta_weight().detach()
    layer.merge()
    return {"delta": delta, "merged_weight": layer.weight.detach().clone(),
            "merged_y": layer(inputs["x"]).detach()}


def _diagnose(module, inputs, outputs, expected):
    """The usual mistakes in the scaling (alpha = 8, r = 4: the right factor is 2)."""
    got = outputs.get("y")
    if not isinstance(got, torch.Tensor) or got.shape != expected["y"].shape:
        return None
    plain = torch.nn.functional.linear(inputs["x"], inputs["W"], inputs["b"])
    update = (expected["y"] - plain) / 2  # B A x itself
    for factor, mistake in ((0.0, "the low-rank update is missing: add scaling * B(A x)"),
                            (1.0, "the update is not scaled: multiply B(A x) by alpha / r"),
                            (8.0, "the update is scaled by alpha; the scaling is alpha / r (Hu et al. sec. 4.1)"),
                            (0.5, "the update is scaled by r / alpha; the scaling is alpha / r")):
        if torch.allclose(got, plain + factor * update, atol=1e-5):
            return mistake
    return None


ASSIGNMENT = Assignment(
    name="lora",
    summary="LoRA: y = W0 x + b + (alpha / r) B A x, and merging B A into W0",
    lesson="lessons/19-lora-and-freezing.md",
    targets=(
        Target(MODULE, "LoRALinear.forward", "y = F.linear(x, weight, bias); unless merged, add scaling * B (A "
               "dropout(x)) computed as two small products (never the d_out x d_in matrix BA). A merged layer "
               "in training mode with gradients on is an error (see the docstring of merge)."),
        Target(MODULE, "LoRALinear.delta_weight", "(alpha / r) B A, the (d_out, d_in) update."),
        Target(MODULE, "LoRALinear.merge", "W <- W + delta_weight() in place (under no_grad); mark the layer "
               "merged; merging twice is an error."),
    ),
    items=(
        Item("forward", MODULE, _inputs, _forward, "the update is (alpha / r) * B(A x), added to the frozen "
             "layer's output", diagnose=_diagnose),
        Item("merge", MODULE, _inputs, _merge, "after merging, the layer computes the same function with one "
             "matrix W0 + (alpha / r) B A"),
    ),
)
