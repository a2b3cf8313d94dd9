"""RoBERTa (Liu et al. 2019, "RoBERTa: A Robustly Optimized BERT Pretraining Approach"): BERT's
encoder with another recipe, and only the differences written here.

Lesson: `lessons/34-roberta.md` (what RoBERTa changed in BERT and why).

RoBERTa keeps BERT's architecture (sec. 2: "we primarily follow the original BERT optimization
hyperparameters" and model) and changes the training: more data, longer, bigger batches, dynamic
masking, no next-sentence prediction (sec. 4), and GPT-2's byte-level BPE vocabulary (sec. 4.4).
So the layers are BERT's (minift/models/bert.py, imported, not copied); what differs in the code is:

- positions, as fairseq numbers them: counted from ``padding_idx + 1`` over the non-padding tokens,
  padding at position ``padding_idx`` (`position_ids`); sequential from ``padding_idx + 1`` when
  ``inputs_embeds`` are given, since nothing then says which tokens are padding;
- one segment: the token-type table is in the checkpoint (type_vocab_size 1), its ids are all 0;
- no pooler in the task heads (no next-sentence task trained one, sec. 4.2); sequence
  classification reads ``<s>`` through its own dense -> tanh -> out_proj (`RobertaClassificationHead`);
- the masked-LM head ``lm_head`` (dense -> GELU -> LayerNorm -> decoder tied to the word embeddings,
  plus a bias): BERT's `cls.predictions` under fairseq's names.

`tests/test_roberta.py` checks every output, loss and gradient against `transformers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from minift.models.bert import (
    BertConfig,
    BertEmbeddings,
    BertEncoder,
    BertHeadOutput,
    BertModel,
    BertModelOutput,
    BertPooler,
    BertPretrainedModel,
    _check_ids,
    _classifier_dropout,
    runs_first_token_only,
)
from minift.models.config import Check, is_int
from minift.models.heads import sequence_classification_loss, token_classification_loss
from minift.nn.attention import padding_mask
from minift.nn.functional import Dropout, LayerNorm, activation
from minift.outputs import refuse_unsupported

# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass
class RobertaConfig(BertConfig):
    """BERT's fields with RoBERTa's defaults as transformers' RobertaConfig has them (roberta-base's
    config.json itself says max_position_embeddings 514, type_vocab_size 1, layer_norm_eps 1e-5), plus
    the ids of ``<s>`` and ``</s>``. pad_token_id is required: the positions are counted from it."""

    model_type: ClassVar[str] = "roberta"

    vocab_size: int = 50265
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2

    @property
    def max_input_positions(self) -> int:
        """The longest input: the table has max_position_embeddings rows, but rows 0..padding_idx are
        never a real token's (roberta-base: 514 rows, 512 tokens)."""
        return self.max_position_embeddings - self.pad_token_id - 1

    def _check(self, check: Check) -> None:
        super()._check(check)
        if not is_int(self.pad_token_id):
            check.fail("pad_token_id", "a token id: RoBERTa counts positions from padding_idx + 1")
        if self.max_input_positions < 1:
            check.fail("max_position_embeddings", f"more than pad_token_id + 1 = {self.pad_token_id + 1} "
                                                  "(positions start after padding_idx)")


# ----------------------------------------------------------------------------------------------------
# The encoder: BERT's, with fairseq's position ids
# ----------------------------------------------------------------------------------------------------


def position_ids(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """fairseq's `make_positions`: real tokens are numbered padding_idx + 1, padding_idx + 2, ... in
    order, skipping padding; padding gets padding_idx. With right padding and padding_idx 1 a row is
    2, 3, ..., n + 1, 1, 1; with left padding the first real token is still padding_idx + 1."""
    real = input_ids.ne(padding_idx).long()  # (B, T)
    return torch.cumsum(real, dim=1) * real + padding_idx  # (B, T)


class RobertaEmbeddings(BertEmbeddings):
    """BERT's embeddings (word + type + position, LayerNorm, dropout) with fairseq's positions; the
    position table's padding row is a padding_idx too (no gradient), as in the checkpoints."""

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                padding_idx=config.pad_token_id)

    def forward(self, input_ids: torch.Tensor | None, token_type_ids: torch.Tensor | None,
                inputs_embeds: torch.Tensor | None = None, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """prompt (B, n, C): prompt tuning's virtual tokens before the text. peft hands them to transformers
        as inputs_embeds, so the whole n + T then gets sequential positions (padding included) and
        segment 0, and so here."""
        if prompt is not None:
            embeds = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
            inputs_embeds = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)  # (B, n + T, C)
            if token_type_ids is not None:
                token_type_ids = F.pad(token_type_ids, (prompt.shape[1], 0))
        if inputs_embeds is None:
            positions = position_ids(input_ids, self.padding_idx)  # (B, T)
            x = self.word_embeddings(input_ids)  # (B, T, C)
        else:  # no ids to find padding in: sequential positions, as transformers does
            length = inputs_embeds.shape[1]
            positions = torch.arange(self.padding_idx + 1, self.padding_idx + 1 + length,
                                     device=inputs_embeds.device)[None, :]  # (1, T)
            x = inputs_embeds
        if token_type_ids is None:  # the one segment: row 0 (present in the checkpoint, never varied)
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class RobertaPretrainedModel(BertPretrainedModel):
    """What every RoBERTa class shares: the config class, the prefix `roberta`, BERT's weight init."""

    config_class = RobertaConfig
    base_model_prefix = "roberta"
    # Old checkpoints' position_ids buffer; the masked-LM head `lm_head` when loading another class.
    _keys_to_ignore_on_load: tuple[str, ...] = (r"position_ids$", r"^lm_head\.")

    def _text(self, out: BertModelOutput) -> torch.Tensor:
        """The text's positions of the last hidden state (B, T, C): prompt tuning's virtual tokens skipped.
        Sequence classification reads position 0 instead: the first virtual token, as under peft."""
        return out.last_hidden_state[:, self.roberta.num_virtual_tokens:]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, RobertaLMHead):
            with torch.no_grad():
                module.bias.zero_()


class RobertaModel(RobertaPretrainedModel):
    """The encoder: RoBERTa's embeddings, BERT's N post-LN layers, optionally BERT's pooler (the
    public checkpoints carry one; the task heads do not use it). Prompt and prefix tuning attach to it
    as to BertModel (`prompt_encoder`, `prefix_encoder`; minift/peft/)."""

    num_virtual_tokens = BertModel.num_virtual_tokens
    _virtual_tokens = BertModel._virtual_tokens

    def __init__(self, config: RobertaConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = RobertaEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.prompt_encoder: nn.Module | None = None  # set by prompt tuning
        self.prefix_encoder: nn.Module | None = None  # set by prefix tuning
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        first_token_only: bool = False,
        **unsupported: Any,
    ) -> BertModelOutput:
        """input_ids (B, T) or inputs_embeds (B, T, C), one of them; attention_mask (B, T) of 1 =
        token, 0 = padding; token_type_ids (B, T), all 0 in RoBERTa's own data. first_token_only: the
        last layer computes position 0 alone, last_hidden_state (B, 1, C) (as `BertModel.forward`)."""
        refuse_unsupported(self, unsupported)
        batch = self._check_inputs(input_ids, attention_mask, token_type_ids, inputs_embeds)[0]
        prompt, prefixes, attention_mask = self._virtual_tokens(batch, attention_mask)
        x = self.embeddings(input_ids, token_type_ids, inputs_embeds, prompt)  # (B, T, C); (B, n + T, C)
        mask = None if attention_mask is None else padding_mask(attention_mask, x.dtype)  # (B, 1, 1, T)
        x = self.encoder(x, mask, prefixes, first_token_only)  # (B, T, C), or (B, 1, C)
        pooled = self.pooler(x) if self.pooler is not None else None  # (B, C)
        return BertModelOutput(last_hidden_state=x, pooler_output=pooled)

    def _check_inputs(self, input_ids, attention_mask, token_type_ids, inputs_embeds) -> tuple[int, int]:
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids (B, T) and inputs_embeds (B, T, C)")
        if input_ids is not None:
            if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
                got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
                raise ValueError(f"input_ids must be a (batch, seq_len) tensor, got {got}")
            _check_ids("input_ids", input_ids, config.vocab_size, "vocab_size")
            shape = tuple(input_ids.shape)
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
                raise ValueError(f"inputs_embeds must be (batch, seq_len, hidden_size={config.hidden_size}), "
                                 f"got {tuple(inputs_embeds.shape)}")
            shape = tuple(inputs_embeds.shape[:2])
        if shape[1] + self.num_virtual_tokens > config.max_input_positions:
            virtual = f" + {self.num_virtual_tokens} virtual tokens of prompt tuning" if self.num_virtual_tokens else ""
            raise ValueError(
                f"the input has {shape[1]} tokens per sequence{virtual}, but the model reads at most "
                f"{config.max_input_positions} (max_position_embeddings={config.max_position_embeddings} "
                f"minus the pad_token_id + 1 = {config.pad_token_id + 1} rows before the first position); "
                "truncate the inputs")
        for name, other in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if other is not None and tuple(other.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(other.shape)}, the input {shape}: they must be equal")
        if token_type_ids is not None:
            _check_ids("token_type_ids", token_type_ids, config.type_vocab_size, "type_vocab_size")
        return shape


# ----------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------


class RobertaClassificationHead(nn.Module):
    """dropout -> dense -> tanh -> dropout -> out_proj on the `<s>` state: a pooler trained with the
    task instead of BERT's next-sentence pooler (fairseq's sentence-classification head)."""

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(_classifier_dropout(config))
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.dropout(hidden[:, 0])  # (B, C): <s>, the first token
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)  # (B, num_labels)


class RobertaForSequenceClassification(RobertaPretrainedModel):
    """One label (or score) per sequence, from `<s>` through `RobertaClassificationHead`."""

    _keys_to_ignore_on_load = (*RobertaPretrainedModel._keys_to_ignore_on_load, r"pooler\.")

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.classifier = RobertaClassificationHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                inputs_embeds=None, **unsupported: Any) -> BertHeadOutput:
        refuse_unsupported(self, unsupported)
        hidden = self.roberta(input_ids, attention_mask, token_type_ids, inputs_embeds,
                              first_token_only=runs_first_token_only(self)).last_hidden_state
        logits = self.classifier(hidden)  # (B, num_labels), from the first position
        loss = None if labels is None else sequence_classification_loss(
            logits, labels, self.config.num_labels, self.config.problem_type, fast=self.config.attn_impl == "sdpa")
        return BertHeadOutput(logits=logits, loss=loss)


class RobertaForTokenClassification(RobertaPretrainedModel):
    """One label per token, as BERT's; label -100 marks positions to skip."""

    _keys_to_ignore_on_load = (*RobertaPretrainedModel._keys_to_ignore_on_load, r"pooler\.")

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.dropout = Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                inputs_embeds=None, **unsupported: Any) -> BertHeadOutput:
        refuse_unsupported(self, unsupported)
        hidden = self._text(self.roberta(input_ids, attention_mask, token_type_ids, inputs_embeds))
        logits = self.classifier(self.dropout(hidden))  # (B, T, num_labels)
        return BertHeadOutput(logits=logits, loss=_token_loss(logits, labels, input_ids, self.config.attn_impl == "sdpa"))


class RobertaLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder (tied to the word embeddings) + bias: BERT's
    `cls.predictions` under fairseq's names. The GELU is the exact one whatever hidden_act says."""

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        fast = config.attn_impl == "sdpa"
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation("gelu", fast=fast)
        self.layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps, fast=fast)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # weight tied on init
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(self.act(self.dense(x)))
        return F.linear(x, self.decoder.weight, self.bias)  # (B, T, vocab_size)


class RobertaForMaskedLM(RobertaPretrainedModel):
    """Predict the tokens at masked positions (RoBERTa's only pre-training task); -100 = not scored."""

    # Keep `lm_head`; skip the pooler, and `lm_head.decoder.bias`, a second name for `lm_head.bias`.
    _keys_to_ignore_on_load = (r"position_ids$", r"pooler\.", r"^lm_head\.decoder\.bias$")
    _tied_weights_keys: ClassVar[dict[str, str]] = {
        "lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight"
    }

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.lm_head = RobertaLMHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                inputs_embeds=None, **unsupported: Any) -> BertHeadOutput:
        refuse_unsupported(self, unsupported)
        hidden = self._text(self.roberta(input_ids, attention_mask, token_type_ids, inputs_embeds))
        logits = self.lm_head(hidden)  # (B, T, vocab_size)
        return BertHeadOutput(logits=logits, loss=_token_loss(logits, labels, input_ids, self.config.attn_impl == "sdpa"))


def _token_loss(logits: torch.Tensor, labels: torch.Tensor | None, input_ids: torch.Tensor | None, fast: bool):
    """Cross-entropy per position; with inputs_embeds there are no ids, and the labels are checked
    against the logits' (B, T) instead."""
    if labels is None:
        return None
    return token_classification_loss(logits, labels, input_ids if input_ids is not None else logits[..., 0], fast)
