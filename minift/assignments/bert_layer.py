"""Assignment `bert-layer`: one post-LN BERT encoder layer with the checkpoint's module names (lesson 05)."""

from __future__ import annotations

import torch

from minift.assignments.base import Assignment, Item, Target
from minift.models.bert import BertConfig, BertLayer
from minift.nn.attention import padding_mask

MODULE = "minift.models.bert"
SHAPE = {"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
         "intermediate_size": 64, "max_position_embeddings": 16}


def _inputs() -> dict:
    torch.manual_seed(11)
    layer = BertLayer(BertConfig(**SHAPE))
    with torch.no_grad():  # BERT's init leaves LayerNorm at the identity; move it off so it is tested
        for name, p in layer.named_parameters():
            p.normal_(1.0 if name.endswith("LayerNorm.weight") else 0.0, 0.3)
    g = torch.Generator().manual_seed(12)
    weights = {f"weight.{k}": v.detach().clone() for k, v in layer.state_dict().items()}
    return {**weights, "x": torch.randn(2, 7, 32, generator=g) * 2,
            "attention_mask": torch.tensor([[1] * 7, [1] * 5 + [0] * 2]), "g": torch.randn(2, 7, 32, generator=g)}


def _build(module, inputs):
    """The student's BertLayer (from their module) with the fixture's weights, in eval mode (no dropout)."""
    layer = module.BertLayer(module.BertConfig(**SHAPE))
    layer.load_state_dict({k.removeprefix("weight."): v for k, v in inputs.items() if k.startswith("weight.")})
    return layer.eval()


def _mask(module, inputs):
    return padding_mask(inputs["attention_mask"], torch.float32)


def _self_attention(module, inputs):
    layer = _build(module, inputs)
    return {"out": layer.attention.self(inputs["x"], _mask(module, inputs)).detach()}


def _attention_block(module, inputs):
    layer = _build(module, inputs)
    return {"out": layer.attention(inputs["x"], _mask(module, inputs)).detach()}


def _layer(module, inputs):
    layer = _build(module, inputs)
    x = inputs["x"].clone().requires_grad_(True)
    out = layer(x, _mask(module, inputs))
    out.backward(inputs["g"])
    grads = {f"grad.{n}": p.grad for n, p in layer.named_parameters()}
    return {"out": out.detach(), "grad_x": x.grad, **grads}


def _post_ln_diagnosis(module, inputs, outputs, expected):
    out = outputs.get("out")
    if isinstance(out, torch.Tensor) and out.shape == expected["out"].shape:
        mean = out[inputs["attention_mask"].bool()].mean(-1).abs().max()
        if mean > 0.5:
            return ("the output is not normalised: BERT is post-LN, LayerNorm(residual + dropout(dense(x))), "
                    "the norm after the sum (Vaswani et al. sec. 3.1)")
    return None


ASSIGNMENT = Assignment(
    name="bert-layer",
    summary="BERT's encoder layer: multi-head self-attention, the post-LN residual blocks, the feed-forward",
    lesson="lessons/05-bert.md",
    targets=(
        Target(MODULE, "BertSelfAttention.forward", "Project x with self.query, self.key, self.value; split the "
               "heads (split_heads); attention(q, k, v, mask, dropout_p=self.dropout_p, training=self.training, "
               "impl=self.impl); merge the heads. Returns (B, T, C)."),
        Target(MODULE, "BertResidualOutput.forward", "Post-LN: LayerNorm(residual + dropout(dense(x)))."),
        Target(MODULE, "BertAttention.forward", "The attention sublayer: self-attention, then self.output with x "
               "as the residual."),
        Target(MODULE, "BertIntermediate.forward", "The first half of the feed-forward: the activation of "
               "dense(x)."),
        Target(MODULE, "BertLayer.forward", "Attention sublayer, then the feed-forward sublayer: output("
               "intermediate(a), residual=a)."),
    ),
    items=(
        Item("self-attention", MODULE, _inputs, _self_attention, "query/key/value projections, split_heads, "
             "attention with the additive mask, merge_heads"),
        Item("attention-sublayer", MODULE, _inputs, _attention_block, "LayerNorm(x + dense(self-attention(x))): "
             "the residual is the sublayer's input", diagnose=_post_ln_diagnosis),
        Item("layer", MODULE, _inputs, _layer, "both sublayers, each post-LN; gradients follow from a correct "
             "forward", diagnose=_post_ln_diagnosis),
    ),
)
