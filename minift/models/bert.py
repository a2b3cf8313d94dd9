"""BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers"): the config,
the encoder and its task heads, with the parameter names of the public checkpoints.

Lesson: `lessons/05-bert.md` (embeddings, the post-LN layer, the pooler, the heads, and the
parameter count of all-MiniLM-L6-v2 worked out by hand).

    input_ids (B, T) -> BertEmbeddings -> N x BertLayer (post-LN) -> (B, T, C)
                     -> pooler: tanh(Dense(h_[CLS]))                          -> (B, C)
    heads: sequence classification (pooled), token classification (every position),
           masked LM (every position, decoder tied to the word embeddings).

`tests/test_bert.py` checks every output, loss and parameter gradient against `transformers`.

Long because it holds one whole architecture, config to heads, read top to bottom in lesson 05;
what BERT shares with GPT-2 is elsewhere (attention and LayerNorm in minift/nn/, the losses of the
heads in heads.py, loading and saving in pretrained.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from minift.models.config import Check, PretrainedConfig, is_int
from minift.models.heads import sequence_classification_loss, token_classification_loss
from minift.models.pretrained import PretrainedModel
from minift.nn.attention import attention, merge_heads, padding_mask, split_heads
from minift.nn.functional import ACTIVATION_NAMES, Dropout, LayerNorm, activation
from minift.outputs import ModelOutput, refuse_unsupported

# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass
class BertConfig(PretrainedConfig):
    """The fields of a BERT config.json that the model uses; defaults are BERT-base's. Reading,
    checking and writing config.json, and the label maps, are shared (minift/models/config.py).

    id2label / label2id map class ids to names; `num_labels`, when given and different from
    len(id2label), wins and rebuilds both maps as LABEL_0, LABEL_1, ... (as transformers does).
    attn_impl is how to run the model ("eager": the readable path, "sdpa": fused kernels); it is
    not part of the checkpoint and is not written to config.json.
    """

    model_type: ClassVar[str] = "bert"
    required: ClassVar[tuple[str, ...]] = (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    unsupported: ClassVar[dict[str, tuple]] = {
        "position_embedding_type": ("absolute",),
        "is_decoder": (False,),
        "add_cross_attention": (False,),
    }

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    initializer_range: float = 0.02
    classifier_dropout: float | None = None
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    tie_word_embeddings: bool = True
    attn_impl: str = "eager"

    def _check(self, check: Check) -> None:
        check.positive_int("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size", "max_position_embeddings", "type_vocab_size")
        check.probability("hidden_dropout_prob", "attention_probs_dropout_prob")
        check.non_negative("layer_norm_eps")
        if self.pad_token_id is not None and not (is_int(self.pad_token_id) and 0 <= self.pad_token_id < self.vocab_size):
            check.fail("pad_token_id", f"null or a token id in [0, vocab_size={self.vocab_size})")
        check.one_of("hidden_act", ACTIVATION_NAMES)
        check.divisible("hidden_size", "num_attention_heads")


# ----------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------


# Indexable as transformers' outputs are (out.logits, out["logits"], out[0]), fields in its order.
@dataclass(eq=False)
class BertModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor = None  # (B, T, C)
    pooler_output: torch.Tensor | None = None  # (B, C), None without a pooling layer


@dataclass(eq=False)
class BertHeadOutput(ModelOutput):
    loss: torch.Tensor | None = None  # scalar, when labels were given (so out[0] is the loss, as in transformers)
    logits: torch.Tensor = None  # (B, num_labels), (B, T, num_labels) or (B, T, vocab_size)


# ----------------------------------------------------------------------------------------------------
# The encoder
# ----------------------------------------------------------------------------------------------------


def _check_ids(name: str, ids: torch.Tensor, limit: int, limit_name: str) -> None:
    """Token and segment ids must index their embedding table: a bad id is a deep IndexError on the
    CPU and an unrecoverable device-side assert on a GPU, so it is caught here, by name."""
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be an integer tensor (torch.long), got {ids.dtype}")
    if ids.numel() == 0:
        return
    low, high = torch.aminmax(ids)
    if low < 0 or high >= limit:
        bad = int(low) if low < 0 else int(high)
        raise ValueError(f"{name} holds {bad}, outside [0, {limit_name}={limit})")


class BertEmbeddings(nn.Module):
    """Token + segment + position embeddings, summed, then LayerNorm and dropout (BERT sec. 3.2,
    fig. 2)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        # padding_idx: the [PAD] row gets no gradient, so it stays what the checkpoint holds.
        self.word_embeddings = nn.Embedding(config.vocab_size, hidden, padding_idx=config.pad_token_id)
        # Learned position vectors (BERT sec. 3.2), not the sinusoids of Vaswani et al. sec. 3.5.
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, hidden)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, hidden)
        self.LayerNorm = LayerNorm(hidden, eps=config.layer_norm_eps, fast=config.attn_impl == "sdpa")
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                prompt: torch.Tensor | None = None, past_length: int = 0) -> torch.Tensor:
        """prompt (B, n, C): prompt tuning's n virtual token embeddings, put before the text's (minift/peft/
        prompt_tuning.py); they then take positions 0..n-1 and segment 0, as in peft, which feeds them to
        transformers as `inputs_embeds`. past_length: positions a decoder's cache already holds (BERT as a
        decoder, minift/models/bert_decoder.py): the new tokens take the positions after them."""
        x = self.word_embeddings(input_ids)  # (B, T, C)
        if prompt is not None:
            x = torch.cat([prompt.to(x.dtype), x], dim=1)  # (B, n + T, C)
            if token_type_ids is not None:
                token_type_ids = F.pad(token_type_ids, (prompt.shape[1], 0))  # segment 0 for the virtual tokens
        length = x.shape[1]
        if token_type_ids is None:  # every token in segment A (row 0)
            x = x + self.token_type_embeddings.weight[0]  # (C,) broadcast
        else:
            x = x + self.token_type_embeddings(token_type_ids)  # (B, T, C)
        x = x + self.position_embeddings.weight[past_length:past_length + length]  # (T, C), broadcast over B
        return self.dropout(self.LayerNorm(x))


# Prefix tuning's learned (key, value) for one layer, each (B, H, n, D).
Prefix = tuple[torch.Tensor, torch.Tensor]


# One BERT layer (Devlin et al. 2019, sec. 3, which uses the encoder of Vaswani et al. 2017 unchanged):
#     a = LayerNorm(x + Dropout(Dense(MultiHeadSelfAttention(x))))       "attention"
#     y = LayerNorm(a + Dropout(Dense(GELU(Dense(a)))))                   "intermediate", "output"
# "Post-LN": LayerNorm(x + Sublayer(x)), the normalisation *after* the residual sum (Vaswani et al.
# sec. 3.1), with dropout on the sublayer's output before the sum (sec. 5.4). GPT-2's pre-LN block,
# x + Sublayer(LayerNorm(x)), is in minift/models/gpt2.py. The attribute names (`attention.self.query`,
# `attention.output.LayerNorm`, `intermediate.dense`, `output.dense`, ...) are exactly the tensor names
# of the public BERT checkpoints, so loading needs no renaming table.


class BertSelfAttention(nn.Module):
    """Multi-head self-attention (Vaswani et al. sec. 3.2.2) without the output projection,
    which the checkpoint stores under `attention.output.dense`."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout_p = config.attention_probs_dropout_prob
        self.impl = config.attn_impl

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, prefix: Prefix | None = None,
                first_token_only: bool = False) -> torch.Tensor:
        """prefix: prefix tuning's learned (key, value), each (B, H, n, D), put before the tokens' own: every
        query may attend to them (the mask then covers n + T keys; minift/peft/prefix.py).
        first_token_only: the query of position 0 alone, (B, 1, C) out; keys and values of every position."""
        q = split_heads(self.query(x[:, :1] if first_token_only else x), self.num_heads)  # (B, H, T or 1, D)
        k = split_heads(self.key(x), self.num_heads)  # (B, H, T, D)
        v = split_heads(self.value(x), self.num_heads)  # (B, H, T, D)
        if prefix is not None:
            k, v = torch.cat([prefix[0], k], dim=2), torch.cat([prefix[1], v], dim=2)  # (B, H, n + T, D)
        out = attention(q, k, v, mask, dropout_p=self.dropout_p, training=self.training, impl=self.impl)
        return merge_heads(out)  # (B, T, C)


class BertResidualOutput(nn.Module):
    """Dense -> Dropout -> LayerNorm(residual + .): the post-LN end of both sublayers.
    In the checkpoint: `attention.output.*` (in = C) and `output.*` (in = intermediate_size)."""

    def __init__(self, config: BertConfig, in_features: int) -> None:
        super().__init__()
        fast = config.attn_impl == "sdpa"
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, fast=fast)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))  # (B, T, C)


class BertAttention(nn.Module):
    """Sublayer 1: a = LayerNorm(x + Dropout(Dense(SelfAttention(x))))."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertResidualOutput(config, config.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, prefix: Prefix | None = None,
                first_token_only: bool = False) -> torch.Tensor:
        if first_token_only:  # the flag only where used (see BertEncoder.forward)
            return self.output(self.self(x, mask, prefix, first_token_only=True), residual=x[:, :1])  # (B, 1, C)
        return self.output(self.self(x, mask, prefix), residual=x)  # (B, T, C)


class BertIntermediate(nn.Module):
    """The first half of the position-wise feed-forward network (Vaswani et al. sec. 3.3): C -> 4C, GELU."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act, fast=config.attn_impl == "sdpa")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))  # (B, T, intermediate_size)


class BertLayer(nn.Module):
    """One post-LN encoder layer: attention sublayer, then feed-forward sublayer."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config, config.intermediate_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, prefix: Prefix | None = None,
                first_token_only: bool = False) -> torch.Tensor:
        """x (B, T, C), mask additive (B, 1, 1, T) or None -> (B, T, C); with first_token_only, (B, 1, C):
        position 0's output alone, which still attends to every position."""
        if first_token_only:  # the flag only where used (see BertEncoder.forward)
            a = self.attention(x, mask, prefix, first_token_only=True)  # (B, 1, C)
        else:
            a = self.attention(x, mask, prefix)  # (B, T, C)
        return self.output(self.intermediate(a), residual=a)


class BertPooler(nn.Module):
    """tanh(Dense(h_[CLS])): the sentence vector BERT's next-sentence head was trained on (sec. 3.1)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, C), from the first ([CLS]) token


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                prefixes: list[Prefix] | None = None, first_token_only: bool = False) -> torch.Tensor:
        """-> (B, T, C); with first_token_only, (B, 1, C): the last layer computes position 0 alone."""
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            prefix = None if prefixes is None else prefixes[i]
            if first_token_only and i == last:
                x = layer(x, mask, prefix, first_token_only=True)  # (B, 1, C)
            else:  # the flag only where it is used, at every depth: a forward(x, mask, prefix) that a
                x = layer(x, mask, prefix)  # reader put in place of a layer's or a sublayer's still runs
        return x


class BertPretrainedModel(PretrainedModel):
    """What every BERT class shares: the config class, the checkpoint prefix and weight init."""

    config_class = BertConfig
    base_model_prefix = "bert"
    # Tensors a checkpoint may hold that these classes deliberately do not: the position_ids buffer
    # old checkpoints saved, and the pre-training heads (masked LM `cls.predictions`, next-sentence
    # `cls.seq_relationship`) of checkpoints such as bert-base-uncased.
    _keys_to_ignore_on_load: tuple[str, ...] = (r"position_ids$", r"^cls\.")

    def _init_weights(self, module: nn.Module) -> None:
        """As BERT's pre-training started: N(0, initializer_range) weights, zero biases, LayerNorm
        at the identity. Only new heads keep these values; everything else is then loaded."""
        std = self.config.initializer_range
        with torch.no_grad():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, BertLMPredictionHead):
                module.bias.zero_()


class BertModel(BertPretrainedModel):
    """The encoder: embeddings, N post-LN layers, and (optionally) the pooler.

    Prompt and prefix tuning (minift/peft/prompt_tuning.py, prefix.py) set `prompt_encoder` or
    `prefix_encoder`: n virtual tokens before the text, or n learned keys/values in every layer. The
    output then covers the n virtual tokens too (B, n + T, C), as transformers' does when peft feeds it
    the prompt; `num_virtual_tokens` says how many positions the heads skip.
    """

    @property
    def num_virtual_tokens(self) -> int:
        """Positions of last_hidden_state before the text: prompt tuning's virtual tokens, else 0."""
        return 0 if self.prompt_encoder is None else self.prompt_encoder.num_virtual_tokens

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.prompt_encoder: nn.Module | None = None  # set by prompt tuning
        self.prefix_encoder: nn.Module | None = None  # set by prefix tuning
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        first_token_only: bool = False,
        **unsupported: Any,
    ) -> BertModelOutput:
        """input_ids (B, T); attention_mask (B, T) of 1 = token, 0 = padding; token_type_ids (B, T).

        first_token_only: last_hidden_state is (B, 1, C), the first position alone (what the pooler and
        a sequence classifier read): the last layer skips its query, attention output and feed-forward
        work at the other T - 1 positions, whose outputs nothing reads (their keys and values it still
        computes: position 0 attends to them). The first position's numbers are those of the full run.
        """
        refuse_unsupported(self, unsupported)
        self._check_inputs(input_ids, attention_mask, token_type_ids)
        prompt, prefixes, attention_mask = self._virtual_tokens(input_ids.shape[0], attention_mask)
        x = self.embeddings(input_ids, token_type_ids, prompt)  # (B, T, C), (B, n + T, C) with a prompt
        # Built once per forward and shared by every layer: (B, 1, 1, T), 0 or the dtype's minimum.
        mask = None if attention_mask is None else padding_mask(attention_mask, x.dtype)
        x = self.encoder(x, mask, prefixes, first_token_only)  # (B, T, C), or (B, 1, C)
        pooled = self.pooler(x) if self.pooler is not None else None  # (B, C)
        return BertModelOutput(last_hidden_state=x, pooler_output=pooled)

    def _virtual_tokens(self, batch: int, attention_mask: torch.Tensor | None):
        """Prompt tuning's n embeddings (B, n, C) or None, prefix tuning's per-layer (key, value) or None,
        and the attention mask with n ones in front: the virtual tokens are always attended (peft)."""
        prompt = None if self.prompt_encoder is None else self.prompt_encoder(batch)  # (B, n, C)
        prefixes = None if self.prefix_encoder is None else self.prefix_encoder(batch)  # per layer (k, v)
        virtual = (prompt.shape[1] if prompt is not None else 0) + (prefixes[0][0].shape[2] if prefixes else 0)
        if attention_mask is not None and virtual:
            attention_mask = F.pad(attention_mask, (virtual, 0), value=1)  # (B, n + T)
        return prompt, prefixes, attention_mask

    def _check_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
    ) -> None:
        config = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = (
                tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            )
            raise ValueError(f"input_ids must be a (batch, seq_len) tensor, got {shape}")
        virtual = self.num_virtual_tokens
        if input_ids.shape[1] + virtual > config.max_position_embeddings:
            prompt = f" + {virtual} virtual tokens of prompt tuning" if virtual else ""
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens per sequence{prompt}, but the model has only "
                f"max_position_embeddings={config.max_position_embeddings} positions; "
                "truncate the inputs"
            )
        _check_ids("input_ids", input_ids, config.vocab_size, "vocab_size")
        for name, other in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if other is not None and other.shape != input_ids.shape:
                raise ValueError(
                    f"{name} has shape {tuple(other.shape)}, input_ids {tuple(input_ids.shape)}: "
                    "they must be equal"
                )
        if token_type_ids is not None:
            _check_ids("token_type_ids", token_type_ids, config.type_vocab_size, "type_vocab_size")


# ----------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------


def runs_first_token_only(model: nn.Module) -> bool:
    """Whether a head that reads only the first position runs the encoder's last layer for it alone:
    on the fast path (attn_impl="sdpa"), in evaluation (eval mode, autograd not recording, as
    minift's `evaluate` runs it). The readable path and training keep every position: in training,
    skipping positions would draw fewer dropout masks and change the random stream after it; with
    autograd on (`minift verify` hooks every layer and runs backward) the last layer's output keeps
    its full (B, T, C) shape. Same logits either way (tests/test_bert.py)."""
    return model.config.attn_impl == "sdpa" and not model.training and not torch.is_grad_enabled()


def _classifier_dropout(config: BertConfig) -> float:
    return config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout


class BertForSequenceClassification(BertPretrainedModel):
    """One label (or score) per sequence, from the pooled [CLS] vector (BERT sec. 4.1)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config)
        self.dropout = Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **unsupported: Any,
    ) -> BertHeadOutput:
        refuse_unsupported(self, unsupported)
        pooled = self.bert(input_ids, attention_mask, token_type_ids,
                           first_token_only=runs_first_token_only(self)).pooler_output  # (B, C)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = None if labels is None else self._loss(logits, labels)
        return BertHeadOutput(logits=logits, loss=loss)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sequence_classification_loss(logits, labels, self.config.num_labels, self.config.problem_type,
                                            fast=self.config.attn_impl == "sdpa")


class BertForTokenClassification(BertPretrainedModel):
    """One label per token (e.g. named entities, BERT sec. 5.3); label -100 marks positions to skip."""

    _keys_to_ignore_on_load = (*BertPretrainedModel._keys_to_ignore_on_load, r"pooler\.")

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **unsupported: Any,
    ) -> BertHeadOutput:
        refuse_unsupported(self, unsupported)
        out = self.bert(input_ids, attention_mask, token_type_ids)
        hidden = out.last_hidden_state[:, self.bert.num_virtual_tokens:]  # (B, T, C): the text's positions
        logits = self.classifier(self.dropout(hidden))  # (B, T, num_labels)
        loss = None if labels is None else token_classification_loss(logits, labels, input_ids, fast=self.config.attn_impl == "sdpa")
        return BertHeadOutput(logits=logits, loss=loss)


class BertPredictionTransform(nn.Module):
    """Dense -> GELU -> LayerNorm before the vocabulary projection (`cls.predictions.transform`)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act, fast=config.attn_impl == "sdpa")
        self.LayerNorm = LayerNorm(
            config.hidden_size, eps=config.layer_norm_eps, fast=config.attn_impl == "sdpa"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """Scores over the vocabulary: transform, then the word-embedding matrix (tied, Press & Wolf 2017)
    plus a bias of its own per token. `decoder` has no bias: the checkpoint keeps it as
    `cls.predictions.bias`."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # weight tied on init
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(x), self.decoder.weight, self.bias)  # (B, T, vocab_size)


class BertMLMHead(nn.Module):
    """A holder, so that the names read `cls.predictions.*` as in the checkpoint."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class BertForMaskedLM(BertPretrainedModel):
    """Predict the tokens at masked positions (BERT sec. 3.1, task #1); label -100 = not scored."""

    # Keep `cls.predictions`; skip the next-sentence head, the pooler, and `decoder.bias`, which
    # transformers stores as a second name for `cls.predictions.bias`.
    _keys_to_ignore_on_load = (
        r"position_ids$",
        r"pooler\.",
        r"^cls\.seq_relationship\.",
        r"^cls\.predictions\.decoder\.bias$",
    )
    _tied_weights_keys: ClassVar[dict[str, str]] = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"
    }

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertMLMHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **unsupported: Any,
    ) -> BertHeadOutput:
        refuse_unsupported(self, unsupported)
        out = self.bert(input_ids, attention_mask, token_type_ids)
        hidden = out.last_hidden_state[:, self.bert.num_virtual_tokens:]  # (B, T, C): the text's positions
        logits = self.cls(hidden)  # (B, T, vocab_size)
        # A classification over the vocabulary at every position, scored where labels != IGNORE_INDEX.
        loss = None if labels is None else token_classification_loss(logits, labels, input_ids, fast=self.config.attn_impl == "sdpa")
        return BertHeadOutput(logits=logits, loss=loss)
