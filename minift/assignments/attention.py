"""Assignment `attention`: scaled dot-product attention, its masks and the head reshapes (lesson 04)."""

from __future__ import annotations

import math

import torch

from minift.assignments.base import Assignment, Item, Target

MODULE = "minift.nn.attention"


def _qkv() -> dict:
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, 6, 8, generator=g) for _ in range(3))
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return {"q": q, "k": k, "v": v, "attention_mask": attention_mask, "g": torch.randn(2, 3, 6, 8, generator=g)}


def _attend(module, inputs, is_causal=False):
    q, k, v = (inputs[n].clone().requires_grad_(True) for n in "qkv")
    mask = module.padding_mask(inputs["attention_mask"], q.dtype)
    out = module.attention(q, k, v, mask, is_causal=is_causal, impl="eager")
    out.backward(inputs["g"])
    return {"out": out.detach(), "grad_q": q.grad, "grad_k": k.grad, "grad_v": v.grad}


def _unscaled(inputs, is_causal=False):
    """The classic mistake: softmax(q k^T + mask) v, without 1/sqrt(d)."""
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    scores = q @ k.transpose(-1, -2)
    scores = scores.masked_fill(inputs["attention_mask"][:, None, None, :] == 0, torch.finfo(q.dtype).min)
    if is_causal:
        scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), torch.finfo(q.dtype).min)
    return torch.softmax(scores, -1) @ v


def _diagnose(is_causal):
    def diagnose(module, inputs, outputs, expected):
        out = outputs.get("out")
        if isinstance(out, torch.Tensor) and out.shape == expected["out"].shape:
            if torch.allclose(out, _unscaled(inputs, is_causal), atol=1e-5):
                return ("the output is softmax(q k^T) v: scale the scores by 1/sqrt(d), d = q.shape[-1] "
                        "(Vaswani et al. sec. 3.2.1)")
            if torch.allclose(out, _unscaled({**inputs, "q": inputs["q"] / math.sqrt(8) ** 2}, is_causal), atol=1e-5):
                return "the scores are divided by d instead of sqrt(d)"
        return None
    return diagnose


def _reshape_inputs() -> dict:
    return {"x": torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(6))}


def _reshape_run(module, inputs):
    heads = module.split_heads(inputs["x"], 3)
    return {"split": heads.contiguous(), "merged": module.merge_heads(heads).contiguous()}


def _mask_inputs() -> dict:
    return {"attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}


ASSIGNMENT = Assignment(
    name="attention",
    summary="scaled dot-product attention with padding and causal masks, and the head reshapes",
    lesson="lessons/04-attention.md",
    targets=(
        Target(MODULE, "split_heads", "(B, T, H * D) -> (B, H, T, D): view the last dimension as (H, D), then "
               "move the heads before the positions."),
        Target(MODULE, "merge_heads", "(B, H, T, D) -> (B, T, H * D): the inverse of split_heads."),
        Target(MODULE, "padding_mask", "(B, T) of 1/0 -> an additive (B, 1, 1, T) mask: 0 where a key is a "
               "token, the dtype's most negative finite value (torch.finfo(dtype).min) where it is padding."),
        Target(MODULE, "causal_mask", "(Tq, Tk) additive mask hiding the future: query i (the last Tq of Tk "
               "positions) may see keys 0 .. i + Tk - Tq; the rest get torch.finfo(dtype).min."),
        Target(MODULE, "_explicit_attention", "Eq. 1 of Vaswani et al.: scores = q k^T / sqrt(d), plus the "
               "mask; probabilities = softmax_fn(scores, dim=-1); dropout on them (dropout(probs, dropout_p, "
               "training=dropout_p > 0)); return probabilities @ v."),
    ),
    items=(
        Item("heads", MODULE, _reshape_inputs, _reshape_run, "split: view(B, T, H, D).transpose(1, 2); merge: "
             "transpose back, then reshape"),
        Item("padding-mask", MODULE, _mask_inputs,
             lambda m, i: {"mask": m.padding_mask(i["attention_mask"], torch.float32)},
             "shape (B, 1, 1, T); 0 for tokens, torch.finfo(dtype).min for padding (not -inf: a row of "
             "only padding would give NaN)"),
        Item("causal-mask", MODULE, dict,
             lambda m, i: {"square": m.causal_mask(4, 4, torch.float32, torch.device("cpu")),
                           "cached": m.causal_mask(2, 5, torch.float32, torch.device("cpu"))},
             "the query at row i is position i + Tk - Tq; it sees keys up to that position"),
        Item("attention", MODULE, _qkv, lambda m, i: {"out": _attend(m, i)["out"]},
             "scores = q k^T / sqrt(d) + mask, softmax over the keys, then @ v", diagnose=_diagnose(False)),
        Item("attention-causal", MODULE, _qkv, lambda m, i: {"out": _attend(m, i, is_causal=True)["out"]},
             "with is_causal the future keys are hidden as well as the padding", diagnose=_diagnose(True)),
        Item("attention-backward", MODULE, _qkv,
             lambda m, i: {k: v for k, v in _attend(m, i).items() if k != "out"},
             "autograd differentiates your forward: a wrong gradient means a wrong (or detached) forward"),
    ),
)
