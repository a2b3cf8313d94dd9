"""BERT as a decoder: transformers' `BertLMHeadModel` (config `is_decoder=True`), with cross-attention
to an encoder when `add_cross_attention=True`, the decoder half of a warm-started encoder-decoder
(Rothe et al. 2020, "Leveraging Pre-trained Checkpoints for Sequence Generation Tasks", sec. 2).

Lesson: `lessons/40-warm-starting-seq2seq.md` (what a BERT checkpoint gives the decoder, what is new).

Each layer is BERT's post-LN layer (minift/models/bert.py) with two changes, as in Vaswani et al.'s
decoder (sec. 3.1, fig. 1):
    a = LayerNorm(x + SelfAttention(x, causal))             "attention"      (masked: sec. 3.2.3)
    c = LayerNorm(a + CrossAttention(a, encoder output))    "crossattention" (new weights)
    y = LayerNorm(c + FFN(c))                               "intermediate", "output"
and the masked-LM head `cls.predictions` scores the next token. Parameter names are transformers',
so a BERT checkpoint loads into it (the cross-attention and, for a checkpoint without an MLM head such
as all-MiniLM-L6-v2, `cls.predictions` start new). `tests/test_encoder_decoder.py` checks it against
transformers inside an EncoderDecoderModel.

The cache is one tuple per layer: the self-attention's (k, v), each (B, H, T_past, D), then with
cross-attention the encoder's (k, v), each (B, H, S, D), computed on the first step and reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from minift.losses import cross_entropy
from minift.models.bert import (
    BertConfig,
    BertEmbeddings,
    BertIntermediate,
    BertMLMHead,
    BertPretrainedModel,
    BertResidualOutput,
    _check_ids,
)
from minift.models.config import Check
from minift.nn.attention import (
    attention,
    cross_attention,
    cross_attention_kv,
    merge_heads,
    padding_mask,
    split_heads,
)
from minift.outputs import ModelOutput, refuse_unsupported

# Per layer: (k, v) of the decoder's own positions, then (k, v) of the encoder's with cross-attention.
KVCache = list[tuple[torch.Tensor, ...]]


@dataclass
class BertDecoderConfig(BertConfig):
    """A BERT config.json read as a decoder: BertConfig's fields plus is_decoder (causal
    self-attention) and add_cross_attention (a cross-attention sublayer in every layer). A plain
    BertConfig refuses both: BertModel is the encoder."""

    unsupported: ClassVar[dict[str, tuple]] = {"position_embedding_type": ("absolute",)}

    is_decoder: bool = True
    add_cross_attention: bool = False

    def _check(self, check: Check) -> None:
        super()._check(check)
        check.boolean("is_decoder")
        check.boolean("add_cross_attention")
        if not self.is_decoder:
            check.fail("is_decoder", "true for BertLMHeadModel, a causal decoder (BERT's encoder is BertModel)")


@dataclass(eq=False)
class BertDecoderOutput(ModelOutput):
    last_hidden_state: torch.Tensor = None  # (B, T, C)
    past_key_values: KVCache | None = None


@dataclass(eq=False)
class BertLMHeadOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor = None  # (B, T, vocab_size)
    past_key_values: KVCache | None = None


class BertDecoderSelfAttention(nn.Module):
    """`query`, `key`, `value` as in BertSelfAttention; as self-attention, causal and appending to its
    cache; as cross-attention (`cross`), queries from the decoder, keys and values from the encoder."""

    def __init__(self, config: BertDecoderConfig, cross: bool) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads, self.cross = config.num_attention_heads, cross
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout_p = config.attention_probs_dropout_prob
        self.impl = config.attn_impl

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, past: tuple[torch.Tensor, ...] | None,
                encoder_hidden_states: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """x (B, T, C) -> (B, T, C) and the (k, v) to cache. mask: the decoder's padding (B, 1, 1, T_past + T),
        or, as cross-attention, the encoder's (B, 1, 1, S)."""
        q = split_heads(self.query(x), self.num_heads)  # (B, H, T, D)
        if self.cross:
            k, v = cross_attention_kv(encoder_hidden_states, lambda h: (self.key(h), self.value(h)),
                                      self.num_heads, past)  # (B, H, S, D)
            out = cross_attention(q, k, v, mask, dropout_p=self.dropout_p, training=self.training, impl=self.impl)
        else:
            k = split_heads(self.key(x), self.num_heads)  # (B, H, T, D)
            v = split_heads(self.value(x), self.num_heads)
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, T_past + T, D)
            out = attention(q, k, v, mask, dropout_p=self.dropout_p, training=self.training, is_causal=True,
                            impl=self.impl)
        return merge_heads(out), (k, v)


class BertDecoderAttention(nn.Module):
    """A post-LN attention sublayer: LayerNorm(x + Dropout(Dense(Attention(x))))."""

    def __init__(self, config: BertDecoderConfig, cross: bool) -> None:
        super().__init__()
        self.self = BertDecoderSelfAttention(config, cross)
        self.output = BertResidualOutput(config, config.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, past: tuple[torch.Tensor, ...] | None,
                encoder_hidden_states: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        out, kv = self.self(x, mask, past, encoder_hidden_states)
        return self.output(out, residual=x), kv


class BertDecoderLayer(nn.Module):
    """Causal self-attention, cross-attention (with add_cross_attention), feed-forward; each post-LN."""

    def __init__(self, config: BertDecoderConfig) -> None:
        super().__init__()
        self.attention = BertDecoderAttention(config, cross=False)
        if config.add_cross_attention:
            self.crossattention = BertDecoderAttention(config, cross=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config, config.intermediate_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, past: tuple[torch.Tensor, ...] | None,
                encoder_hidden_states: torch.Tensor | None,
                encoder_mask: torch.Tensor | None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        a, present = self.attention(x, mask, None if past is None else past[:2])
        if encoder_hidden_states is not None:
            a, encoder_kv = self.crossattention(a, encoder_mask, None if past is None else past[2:],
                                                encoder_hidden_states)
            present = (*present, *encoder_kv)
        return self.output(self.intermediate(a), residual=a), present


class BertDecoderStack(nn.Module):
    """The layers; `encoder.layer` in the checkpoint, whatever the role."""

    def __init__(self, config: BertDecoderConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertDecoderLayer(config) for _ in range(config.num_hidden_layers))


class BertDecoderModel(BertPretrainedModel):
    """Embeddings and decoder layers, no pooler (`bert.*` of BertLMHeadModel)."""

    config_class = BertDecoderConfig

    def __init__(self, config: BertDecoderConfig) -> None:
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertDecoderStack(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        **unsupported: Any,
    ) -> BertDecoderOutput:
        """input_ids (B, T): the new tokens when `past_key_values` holds the earlier ones; attention_mask
        (B, T_past + T); encoder_hidden_states (B, S, C) and encoder_attention_mask (B, S): what the
        cross-attention reads."""
        refuse_unsupported(self, unsupported)
        past_len = self._check_inputs(input_ids, attention_mask, past_key_values, encoder_hidden_states,
                                      encoder_attention_mask)
        x = self.embeddings(input_ids, token_type_ids, past_length=past_len)  # (B, T, C)
        mask = None if attention_mask is None else padding_mask(attention_mask, x.dtype)  # (B, 1, 1, T_past + T)
        encoder_mask = None if encoder_attention_mask is None else padding_mask(encoder_attention_mask, x.dtype)
        presents = []
        for i, layer in enumerate(self.encoder.layer):
            x, present = layer(x, mask, None if past_key_values is None else past_key_values[i],
                               encoder_hidden_states, encoder_mask)
            presents.append(present)
        return BertDecoderOutput(last_hidden_state=x, past_key_values=presents if use_cache else None)

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, past: KVCache | None,
                      encoder_hidden_states: torch.Tensor | None, encoder_attention_mask: torch.Tensor | None) -> int:
        """Shapes and ids; returns the cached length T_past."""
        config = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a (batch, seq_len) tensor, got "
                             f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)}")
        _check_ids("input_ids", input_ids, config.vocab_size, "vocab_size")
        entries = 4 if config.add_cross_attention else 2
        if past is not None and (len(past) != config.num_hidden_layers or any(len(p) != entries for p in past)):
            raise ValueError(f"past_key_values must be a list of num_hidden_layers={config.num_hidden_layers} "
                             f"tuples of {entries} tensors")
        past_len = 0 if past is None else past[0][0].shape[2]
        length = past_len + input_ids.shape[1]
        if length > config.max_position_embeddings:
            raise ValueError(f"the decoder's sequence is {length} tokens long ({past_len} cached + "
                             f"{input_ids.shape[1]} new), but it has only max_position_embeddings="
                             f"{config.max_position_embeddings} positions; shorten the target")
        if attention_mask is not None and tuple(attention_mask.shape) != (input_ids.shape[0], length):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected (B, T_past + T) = "
                             f"{(input_ids.shape[0], length)}")
        if config.add_cross_attention != (encoder_hidden_states is not None):
            raise ValueError("this BERT decoder has cross-attention: give it encoder_hidden_states (B, S, C)"
                             if config.add_cross_attention else
                             "encoder_hidden_states given, but this BERT decoder has no cross-attention "
                             "(add_cross_attention=False)")
        if encoder_hidden_states is not None:
            if encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[::2] != (input_ids.shape[0],
                                                                                        config.hidden_size):
                raise ValueError(f"encoder_hidden_states has shape {tuple(encoder_hidden_states.shape)}, expected "
                                 f"(B, S, hidden_size) = ({input_ids.shape[0]}, S, {config.hidden_size})")
            if encoder_attention_mask is not None and encoder_attention_mask.shape != encoder_hidden_states.shape[:2]:
                raise ValueError(f"encoder_attention_mask has shape {tuple(encoder_attention_mask.shape)}, expected "
                                 f"(B, S) = {tuple(encoder_hidden_states.shape[:2])}")
        return past_len


class BertLMHeadModel(BertPretrainedModel):
    """BERT as a left-to-right language model: the decoder layers, then the masked-LM head scoring the
    next token at every position (tied to the word embeddings). labels are shifted here, as in
    transformers: position t is scored on labels[t + 1]; -100 is not scored."""

    config_class = BertDecoderConfig
    # The pooler and the next-sentence head of a BERT checkpoint have no place in a decoder;
    # `decoder.bias` is transformers' second name for `cls.predictions.bias`.
    _keys_to_ignore_on_load = (r"position_ids$", r"pooler\.", r"^cls\.seq_relationship\.",
                               r"^cls\.predictions\.decoder\.bias$")
    _tied_weights_keys: ClassVar[dict[str, str]] = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"}

    def __init__(self, config: BertDecoderConfig) -> None:
        super().__init__(config)
        self.bert = BertDecoderModel(config)
        self.cls = BertMLMHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        **unsupported: Any,
    ) -> BertLMHeadOutput:
        refuse_unsupported(self, unsupported)
        out = self.bert(input_ids, attention_mask, token_type_ids, past_key_values, use_cache,
                        encoder_hidden_states, encoder_attention_mask)
        logits = self.cls(out.last_hidden_state)  # (B, T, vocab_size)
        loss = None
        if labels is not None:
            loss = cross_entropy(logits[:, :-1].reshape(-1, self.config.vocab_size), labels[:, 1:].reshape(-1))
        return BertLMHeadOutput(loss=loss, logits=logits, past_key_values=out.past_key_values)
