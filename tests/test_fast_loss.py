"""The models' fast path (attn_impl="sdpa") computes their loss with torch's fused cross-entropy
(`minift.losses.cross_entropy(fast=True)`), the readable path (eager) with the hand-written one, and
both give the same loss and gradients. tests/test_losses.py checks the two functions against each other
and torch; this file checks that every head is wired to the one its path names."""

import pytest
import torch

import minift.losses
from minift.models import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertLMHeadModel,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
)
from minift.models.bert_decoder import BertDecoderConfig
from minift.models.transformer import Transformer, TransformerConfig
from minift.train.objective import Objective

pytestmark = pytest.mark.usefixtures("one_thread")

BERT = {"vocab_size": 57, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 48, "max_position_embeddings": 24, "num_labels": 3, "pad_token_id": 0}
GPT2 = {"vocab_size": 61, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 24, "num_labels": 3,
        "pad_token_id": 0}
ROBERTA = {**BERT, "max_position_embeddings": 26, "pad_token_id": 1, "type_vocab_size": 1}

# (model class, config class, config, labels per position (token-level) or per sequence)
HEADS = [
    (BertForSequenceClassification, BertConfig, BERT, "sequence"),
    (BertForTokenClassification, BertConfig, BERT, "token"),
    (BertForMaskedLM, BertConfig, BERT, "vocab"),
    (BertLMHeadModel, BertDecoderConfig, {**BERT, "is_decoder": True}, "vocab"),
    (GPT2LMHeadModel, GPT2Config, GPT2, "vocab"),
    (GPT2ForSequenceClassification, GPT2Config, GPT2, "sequence"),
    (GPT2ForTokenClassification, GPT2Config, GPT2, "token"),
    (RobertaForSequenceClassification, RobertaConfig, ROBERTA, "sequence"),
    (RobertaForTokenClassification, RobertaConfig, ROBERTA, "token"),
    (RobertaForMaskedLM, RobertaConfig, ROBERTA, "vocab"),
]


def batch_for(config: dict, kind: str, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, config["vocab_size"], (3, 9), generator=gen)  # never a pad id
    classes = {"sequence": config["num_labels"], "token": config["num_labels"], "vocab": config["vocab_size"]}[kind]
    labels = torch.randint(0, classes, (3,) if kind == "sequence" else (3, 9), generator=gen)
    if kind != "sequence":
        labels[:, ::4] = -100  # some positions not scored
    return {"input_ids": ids, "labels": labels}


@pytest.fixture
def fused_calls(monkeypatch):
    """How many times torch's fused cross-entropy ran through minift.losses."""
    calls = []
    real = minift.losses.F.cross_entropy
    monkeypatch.setattr(minift.losses.F, "cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("cls, config_cls, config, kind", HEADS, ids=[h[0].__name__ for h in HEADS])
@pytest.mark.parametrize("seed", [0, 1])
def test_sdpa_heads_use_the_fused_loss_with_the_same_numbers(cls, config_cls, config, kind, seed, fused_calls):
    torch.manual_seed(seed)
    eager = cls(config_cls.from_dict({**config, "attn_impl": "eager"})).eval()
    sdpa = cls(config_cls.from_dict({**config, "attn_impl": "sdpa"})).eval()
    sdpa.load_state_dict(eager.state_dict())
    batch = batch_for(config, kind, seed)
    losses, grads = [], []
    for model in (eager, sdpa):
        before = len(fused_calls)
        loss = model(**batch).loss
        losses.append(loss.detach())
        grads.append(torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True))
        assert len(fused_calls) - before == (model is sdpa), f"{model.config.attn_impl}: wrong loss function"
    assert (losses[0] - losses[1]).abs().item() <= 1e-6  # loss ~ log(C): fp32 sums in another order
    for name, (a, b) in zip((n for n, _ in eager.named_parameters()), zip(*grads)):
        if a is not None or b is not None:
            assert (a - b).abs().max().item() <= 1e-5, name


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_objective_with_label_smoothing_follows_the_models_path(impl, fused_calls):
    """--label-smoothing / --class-weights compute the loss in Objective: fused on the sdpa path too."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig.from_dict({**BERT, "attn_impl": impl})).eval()
    objective = Objective("examples", class_weights=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1)
    batch = batch_for(BERT, "sequence", 0)
    loss = objective.loss(model, batch)
    logits = model(input_ids=batch["input_ids"]).logits
    ref = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=torch.tensor([1.0, 2.0, 0.5]),
                                            label_smoothing=0.1)
    assert (loss - ref).abs().item() <= 1e-6
    assert len(fused_calls) == (2 if impl == "sdpa" else 1)  # ours (sdpa only) + the reference's own call


@pytest.mark.parametrize("seed", [0, 1])
def test_the_transformer_uses_the_fused_loss_on_its_sdpa_path(seed, fused_calls):
    config = {"vocab_size": 50, "d_model": 16, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
              "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "dropout": 0.0,
              "max_position_embeddings": 32}
    torch.manual_seed(seed)
    eager = Transformer(TransformerConfig(**config, attn_impl="eager")).eval()
    sdpa = Transformer(TransformerConfig(**config, attn_impl="sdpa")).eval()
    sdpa.load_state_dict(eager.state_dict())
    gen = torch.Generator().manual_seed(seed)
    source, labels = torch.randint(4, 50, (3, 7), generator=gen), torch.randint(4, 50, (3, 5), generator=gen)
    labels[:, -1] = -100
    losses = []
    for model in (eager, sdpa):
        before = len(fused_calls)
        losses.append(model(input_ids=source, labels=labels).loss)
        assert len(fused_calls) - before == (model is sdpa)
    assert (losses[0] - losses[1]).abs().item() <= 1e-6
