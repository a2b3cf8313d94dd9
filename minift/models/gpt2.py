"""GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"): the config,
the decoder, its KV cache and its heads, with the parameter names of the public checkpoints.

Lesson: `lessons/15-gpt2.md` (the causal mask, pre-LN vs BERT's post-LN, weight tying, the Conv1D
transpose, the parameter count); generation with the KV cache is `minift/generate.py`, lesson 16.

    input_ids (B, T) -> wte + wpe -> N x pre-LN Block -> ln_f -> (B, T, C)
    heads: language model (every position, tied to wte), sequence classification (last real token),
           token classification (every position).

It follows OpenAI's original TensorFlow code (gpt-2/src/model.py) and the `transformers`
implementation, which `tests/test_gpt2.py` checks every output, loss and gradient against.

Long because it holds one whole architecture, config to heads, read top to bottom in lesson 15 (as
bert.py does BERT); the CPU decoding path is apart, in gpt2_fast.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from minift.generation.mixin import GenerationMixin
from minift.losses import IGNORE_INDEX, cross_entropy
from minift.models.config import Check, PretrainedConfig, is_int
from minift.models.gpt2_fast import use_fast_path
from minift.models.heads import sequence_classification_loss, token_classification_loss
from minift.models.pretrained import PretrainedModel
from minift.nn.attention import (
    attention,
    cross_attention,
    cross_attention_kv,
    merge_heads,
    packed_sequence_ids,
    padding_mask,
    same_sequence_mask,
    split_heads,
)
from minift.nn.functional import ACTIVATION_NAMES, Dropout, LayerNorm, activation
from minift.outputs import ModelOutput, refuse_unsupported

# One (key, value) pair per layer, each (B, H, T_past, D): everything attention needs from the past.
# A decoder with cross-attention (add_cross_attention) keeps four per layer: its own (k, v), which
# grow by a position per step, then the encoder's (k, v), (B, H, S, D), computed once and reused.
KVCache = list[tuple[torch.Tensor, ...]]


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass
class GPT2Config(PretrainedConfig):
    """The fields of a GPT-2 config.json that the model uses; defaults are GPT-2 small's (124M).
    Reading, checking and writing config.json, and the label maps, are shared
    (minift/models/config.py).

    n_inner None means 4 * n_embd (Radford et al. 2018, sec. 4.1). attn_impl is how to run the
    model, not part of the checkpoint: "eager" is the readable path; "sdpa" is fused kernels and, on a
    CPU, the faster products of a decoding step (minift/models/gpt2_fast.py; lesson 16).
    """

    model_type: ClassVar[str] = "gpt2"
    required: ClassVar[tuple[str, ...]] = ("vocab_size", "n_embd", "n_layer", "n_head")
    # (reorder_and_upcast_attn only changes the order of the float32 attention math under mixed
    # precision; the model is the same, so it is ignored.)
    unsupported: ClassVar[dict[str, tuple]] = {
        "scale_attn_weights": (True,),
        "scale_attn_by_inverse_layer_idx": (False,),
    }

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None
    classifier_dropout: float | None = None
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    tie_word_embeddings: bool = True
    # A decoder that reads an encoder (minift/models/encoder_decoder.py): every block gets a
    # cross-attention sublayer, `crossattention` and `ln_cross_attn`, as in transformers.
    add_cross_attention: bool = False
    attn_impl: str = "eager"

    @property
    def inner_size(self) -> int:
        return 4 * self.n_embd if self.n_inner is None else self.n_inner

    def _check(self, check: Check) -> None:
        check.positive_int("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
        check.positive_int("n_inner", nullable=True)
        check.probability("resid_pdrop", "embd_pdrop", "attn_pdrop")
        check.non_negative("layer_norm_epsilon")
        # Types only, no range: transformers' GPT2Config keeps GPT-2's 50256 for any vocab_size, so small
        # random checkpoints carry special ids outside their vocabulary (an id the model never produces).
        for key in ("bos_token_id", "pad_token_id"):
            value = getattr(self, key)
            if value is not None and not (is_int(value) and value >= 0):
                check.fail(key, "null or a token id (an integer >= 0)")
        eos = self.eos_token_id
        if eos is not None and not all(is_int(i) and i >= 0 for i in (eos if isinstance(eos, list) else [eos])):
            check.fail("eos_token_id", "null, a token id or a list of token ids")
        check.one_of("activation_function", ACTIVATION_NAMES)
        check.divisible("n_embd", "n_head")
        check.boolean("add_cross_attention")

    def to_dict(self) -> dict[str, Any]:
        """config.json; add_cross_attention only when set, so a plain GPT-2's file is unchanged."""
        d = super().to_dict()
        if not self.add_cross_attention:
            del d["add_cross_attention"]
        return d


# ----------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------


# Indexable as transformers' outputs are (out.logits, out["logits"], out[0]), fields in its order.
@dataclass(eq=False)
class GPT2ModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor = None  # (B, T, C)
    past_key_values: KVCache | None = None  # with use_cache=True: per layer (k, v), (B, H, T_past + T, D)


@dataclass(eq=False)
class GPT2HeadOutput(ModelOutput):
    loss: torch.Tensor | None = None  # scalar, when labels were given (so out[0] is the loss, as in transformers)
    logits: torch.Tensor = None  # (B, T, vocab_size), (B, num_labels) or (B, T, num_labels)
    past_key_values: KVCache | None = None


# ----------------------------------------------------------------------------------------------------
# The decoder
# ----------------------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Masked multi-head self-attention (Vaswani et al. 2017, sec. 3.2.3): position t sees 0..t.

    c_attn projects to q, k and v at once (one (C, 3C) matrix, as OpenAI's code); c_proj mixes the
    heads back. With a cache, only the new tokens are projected; their k and v are appended to the
    cached ones, and the new queries attend over all of them.
    """

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = Dropout(config.resid_pdrop)
        self.attn_pdrop = config.attn_pdrop
        self.impl = config.attn_impl

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                past: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, C); mask additive (B, 1, 1, T_past + T) or None -> (B, T, C) and the new (k, v)."""
        q, k, v = self.c_attn(x).split(x.shape[-1], dim=2)  # 3 x (B, T, C)
        q, k, v = (split_heads(t, self.n_head) for t in (q, k, v))  # (B, H, T, D)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, H, T_past + T, D)
            v = torch.cat([past[1], v], dim=2)
        out = attention(q, k, v, mask, dropout_p=self.attn_pdrop, training=self.training, is_causal=True,
                        impl=self.impl)  # (B, H, T, D)
        return self.resid_dropout(self.c_proj(merge_heads(out))), (k, v)


class GPT2CrossAttention(nn.Module):
    """Multi-head attention from the decoder's positions to the encoder's (Vaswani et al. sec. 3.2.3):
    q_attn projects the decoder's x to queries, c_attn the encoder's output to keys and values (one
    (C, 2C) matrix), c_proj mixes the heads back; transformers' `GPT2Attention(is_cross_attention=True)`.
    The encoder's k and v are computed on the first step and then come from the cache."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 2 * config.n_embd)
        self.q_attn = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = Dropout(config.resid_pdrop)
        self.attn_pdrop = config.attn_pdrop
        self.impl = config.attn_impl

    def forward(self, x: torch.Tensor, encoder_hidden_states: torch.Tensor, encoder_mask: torch.Tensor | None,
                cached: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, C), encoder_hidden_states (B, S, C), encoder_mask (B, 1, 1, S) -> (B, T, C), the encoder's (k, v)."""
        q = split_heads(self.q_attn(x), self.n_head)  # (B, H, T, D)
        k, v = cross_attention_kv(encoder_hidden_states, lambda h: self.c_attn(h).split(x.shape[-1], dim=2),
                                  self.n_head, cached)  # (B, H, S, D) each
        out = cross_attention(q, k, v, encoder_mask, dropout_p=self.attn_pdrop, training=self.training,
                              impl=self.impl)  # (B, H, T, D)
        return self.resid_dropout(self.c_proj(merge_heads(out))), (k, v)


class MLP(nn.Module):
    """Position-wise feed-forward network: C -> inner (4C) -> tanh-GELU -> C (Vaswani et al. sec. 3.3)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.inner_size)
        self.act = activation(config.activation_function, fast=config.attn_impl == "sdpa")
        self.c_proj = nn.Linear(config.inner_size, config.n_embd)
        self.dropout = Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.c_fc(x))  # (B, T, inner)
        return self.dropout(self.c_proj(hidden))  # (B, T, C)


class Block(nn.Module):
    """Pre-LN block (Radford et al. 2019, sec. 2.3: "layer normalization was moved to the input of
    each sub-block"): x + attn(ln_1(x)), then x + mlp(ln_2(x)). The residual stream itself is never
    normalised, which is why GPT-2 needs the final ln_f and why deep pre-LN stacks train stably
    (Xiong et al. 2020)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        fast = config.attn_impl == "sdpa"
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, fast=fast)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, fast=fast)
        if config.add_cross_attention:  # a pre-LN sublayer between the two (transformers' GPT2Block)
            self.crossattention = GPT2CrossAttention(config)
            self.ln_cross_attn = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, fast=fast)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, past: tuple[torch.Tensor, ...] | None,
                encoder_hidden_states: torch.Tensor | None = None,
                encoder_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """past: this block's (k, v), or (k, v, encoder k, encoder v) with cross-attention."""
        attn_out, present = self.attn(self.ln_1(x), mask, None if past is None else past[:2])
        x = x + attn_out  # (B, T, C)
        if encoder_hidden_states is not None:
            cross_out, encoder_kv = self.crossattention(
                self.ln_cross_attn(x), encoder_hidden_states, encoder_mask, None if past is None else past[2:])
            x = x + cross_out  # (B, T, C)
            present = (*present, *encoder_kv)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x, present


class GPT2PretrainedModel(PretrainedModel):
    """What every GPT-2 class shares: the config class, the checkpoint prefix, init, the transpose,
    and on the fast path the faster layers of a decoding step."""

    config_class = GPT2Config
    base_model_prefix = "transformer"
    # Older checkpoints (openai-community/gpt2 among them) saved the causal mask as a buffer
    # `h.{i}.attn.bias` (and `attn.masked_bias`); we build the mask when needed instead.
    _keys_to_ignore_on_load: tuple[str, ...] = (r"\.attn\.bias$", r"\.attn\.masked_bias$")  # not c_attn.bias
    # OpenAI's TensorFlow code wrote these projections as 1x1 convolutions, whose kernel is stored
    # (in_features, out_features); transformers kept that as its `Conv1D` module. An nn.Linear weight
    # is (out, in), so minift/checkpoint/load.py transposes these four on load and back on save, here only.
    _transposed_weights: tuple[str, ...] = (
        r"attn\.c_attn\.weight$",
        r"attn\.c_proj\.weight$",
        r"mlp\.c_fc\.weight$",
        r"mlp\.c_proj\.weight$",
        r"crossattention\.(c_attn|q_attn|c_proj)\.weight$",
    )

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) weights, zero biases, LayerNorm at the identity; the two output
        projections that write into the residual stream are scaled by 1/sqrt(2 n_layer) so the
        stream's variance does not grow with depth (Radford et al. 2019, sec. 2.3)."""
        std = self.config.initializer_range
        with torch.no_grad():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            if isinstance(module, (CausalSelfAttention, GPT2CrossAttention, MLP)):
                module.c_proj.weight.normal_(0.0, std / (2 * self.config.n_layer) ** 0.5)

    def post_init(self) -> None:
        """Initialise and tie (PretrainedModel.post_init); on the fast path, then swap layers."""
        super().post_init()
        if self.config.attn_impl == "sdpa":
            use_fast_path(self)  # CPU decoding: the same weights in faster layers, see minift/models/gpt2_fast.py


def _check_ids(input_ids: Any, vocab_size: int) -> None:
    """A bad id is a deep IndexError on the CPU (a device-side assert on a GPU): catch it by name."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (batch, seq_len) tensor, got {shape}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be an integer tensor (torch.long), got {input_ids.dtype}")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        bad = int(input_ids.min()) if input_ids.min() < 0 else int(input_ids.max())
        raise ValueError(f"input_ids holds {bad}, outside [0, vocab_size={vocab_size})")


def _check_past(past: KVCache, config: GPT2Config, batch: int, cross: bool = False) -> int:
    """The cache must be one (k, v) of shape (B, H, T_past, D) per layer, followed by the encoder's
    (k, v) when the decoder reads an encoder (`cross`); returns T_past."""
    head_dim = config.n_embd // config.n_head
    entries = 4 if cross else 2
    if not isinstance(past, (list, tuple)) or len(past) != config.n_layer:
        found = len(past) if isinstance(past, (list, tuple)) else type(past).__name__
        raise ValueError(f"past_key_values must be a list of n_layer={config.n_layer} (k, v) pairs, got {found}")
    if any(len(layer) != entries for layer in past):
        raise ValueError(f"past_key_values must hold {entries} tensors per layer ((k, v)"
                         f"{' and the encoder (k, v)' if cross else ''}), got {[len(layer) for layer in past]}")
    length = past[0][0].shape[2] if past[0][0].dim() == 4 else -1
    expected = (batch, config.n_head, length, head_dim)
    for i, (k, v, *_) in enumerate(past):
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(f"past_key_values[{i}]: k {tuple(k.shape)} and v {tuple(v.shape)} must both be "
                             f"(B, H, T_past, D) = {expected}")
    return length


class GPT2Model(GPT2PretrainedModel):
    """The decoder: token + learned position embeddings, N pre-LN blocks, final LayerNorm."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings, also the LM head
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)  # learned, not sinusoidal
        self.drop = Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, fast=config.attn_impl == "sdpa")
        self.prompt_encoder: nn.Module | None = None  # set by prompt tuning (minift/peft/prompt_tuning.py)
        self.prefix_encoder: nn.Module | None = None  # set by prefix tuning (minift/peft/prefix.py)
        self.post_init()

    @property
    def num_virtual_tokens(self) -> int:
        """Positions of last_hidden_state before the text: prompt tuning's virtual tokens, else 0."""
        return 0 if self.prompt_encoder is None else self.prompt_encoder.num_virtual_tokens

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        **unsupported: Any,
    ) -> GPT2ModelOutput:
        """input_ids (B, T): the new tokens only when `past_key_values` holds the earlier ones.
        attention_mask (B, T_past + T): 1 = token, 0 = padding, over the past and the new tokens.
        position_ids (B, T): default T_past, T_past + 1, ... whatever attention_mask says, as in
        transformers' GPT2Model.forward. Right padding needs nothing more; a left-padded row must be
        given its positions (`minift.generate.position_ids_from_mask`, which generate passes), or its
        tokens are read at positions shifted by the padding (lesson 15).
        use_cache: also return the updated cache (the past plus these tokens' k and v).
        encoder_hidden_states (B, S, C), encoder_attention_mask (B, S): what the cross-attention of a
        decoder built with add_cross_attention reads (the encoder's output and its padding)."""
        refuse_unsupported(self, unsupported)
        _check_ids(input_ids, self.config.vocab_size)
        packed = self._packed(input_ids, attention_mask, position_ids, past_key_values)
        _check_encoder(self.config, input_ids, encoder_hidden_states, encoder_attention_mask)
        prompt, past_key_values, attention_mask, position_ids = self._virtual_tokens(
            input_ids.shape[0], past_key_values, attention_mask, position_ids)
        length = input_ids.shape[1] + (0 if prompt is None else prompt.shape[1])
        past_len = self._check_inputs(input_ids, length, attention_mask, position_ids, past_key_values)
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + length, device=input_ids.device)[None]  # (1, T)
        x = self.wte(input_ids)  # (B, T, C)
        if prompt is not None:
            x = torch.cat([prompt.to(x.dtype), x], dim=1)  # (B, n + T, C)
        x = self.drop(x + self.wpe(position_ids))  # (B, T, C)
        # Built once and shared by every layer: (B, 1, 1, T_past + T); the causal part is added in
        # `attention` (is_causal=True), which lets sdpa use its fused causal kernel when there is no padding.
        mask = None if attention_mask is None else padding_mask(attention_mask, x.dtype)
        if packed is not None:  # several examples in a row: each attends only to itself, (B, 1, T, T)
            mask = same_sequence_mask(packed, x.dtype)
        encoder_mask = (None if encoder_attention_mask is None
                        else padding_mask(encoder_attention_mask, x.dtype))  # (B, 1, 1, S)
        presents = []
        for i, block in enumerate(self.h):
            past = None if past_key_values is None else past_key_values[i]
            # A plain GPT-2 calls its blocks as before (lessons patch Block.forward with that signature).
            cross = () if encoder_hidden_states is None else (encoder_hidden_states, encoder_mask)
            x, present = block(x, mask, past, *cross)
            presents.append(present)
        return GPT2ModelOutput(last_hidden_state=self.ln_f(x), past_key_values=presents if use_cache else None)

    def _packed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                position_ids: torch.Tensor | None, past: KVCache | None) -> torch.Tensor | None:
        """(B, T) packed-example index of each token when position_ids restart inside a row (several
        examples packed, minift/data/sft.py), else None. As in transformers 5 (masking_utils), only
        without attention_mask and cache: a training batch of packed examples."""
        if position_ids is None or attention_mask is not None or past is not None or input_ids.shape[1] == 0:
            return None
        if position_ids.dim() != 2 or position_ids.shape[1] != input_ids.shape[1]:
            return None  # _check_inputs says what is wrong
        packed = packed_sequence_ids(position_ids.expand(input_ids.shape[0], -1))
        if packed is not None and (self.prompt_encoder is not None or self.prefix_encoder is not None):
            raise ValueError("packed examples (position_ids restarting inside a row) cannot take prompt or prefix "
                             "tuning's virtual tokens, which belong to one sequence; train without packing")
        return packed

    def _virtual_tokens(self, batch: int, past: KVCache | None, attention_mask: torch.Tensor | None,
                        position_ids: torch.Tensor | None):
        """Prompt tuning's n embeddings before the text, or prefix tuning's n keys/values as a cache the
        model did not compute (Li & Liang 2021, sec. 4.2), with the mask and positions extended as peft
        extends them: the virtual tokens are always attended and take positions 0..n-1, the text's move
        up by n. After the first step of generation the cache holds them: nothing is prepended again,
        but the mask (which the caller keeps over the text only) still gets its n ones."""
        n = (self.prompt_encoder.num_virtual_tokens if self.prompt_encoder is not None
             else self.prefix_encoder.num_virtual_tokens if self.prefix_encoder is not None else 0)
        if n == 0:
            return None, past, attention_mask, position_ids
        prompt = None
        if past is None and self.prompt_encoder is not None:
            prompt = self.prompt_encoder(batch)  # (B, n, C)
        if past is None and self.prefix_encoder is not None:
            past = self.prefix_encoder(batch)  # per layer (k, v), each (B, H, n, D)
        if attention_mask is not None:
            attention_mask = F.pad(attention_mask, (n, 0), value=1)  # (B, n + T_past + T)
        if position_ids is not None:
            position_ids = position_ids + n
            if prompt is not None:  # the virtual tokens' own positions, 0..n-1
                position_ids = torch.cat([torch.arange(n, device=position_ids.device).expand(
                    position_ids.shape[0], n), position_ids], dim=1)
        return prompt, past, attention_mask, position_ids

    def _check_inputs(self, input_ids: torch.Tensor, length: int, attention_mask: torch.Tensor | None,
                      position_ids: torch.Tensor | None, past: KVCache | None) -> int:
        """Every input's shape against the others (`length`: the new positions, input_ids' plus prompt
        tuning's virtual tokens); returns the cached length T_past."""
        config = self.config
        batch = input_ids.shape[0]
        virtual = "" if length == input_ids.shape[1] else f" and {length - input_ids.shape[1]} virtual tokens"
        past_len = 0 if past is None else _check_past(past, config, batch, config.add_cross_attention)
        if past_len + length > config.n_positions:
            raise ValueError(f"the sequence is {past_len + length} tokens long ({past_len} cached + {length} in "
                             f"input_ids{virtual}), but GPT-2 has only n_positions={config.n_positions} positions; "
                             "truncate the prompt")
        if attention_mask is not None and tuple(attention_mask.shape) != (batch, past_len + length):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected (B, T_past + T) = "
                             f"{(batch, past_len + length)} for input_ids {tuple(input_ids.shape)} and "
                             f"{past_len} cached positions")
        if position_ids is not None:
            if position_ids.dim() != 2 or position_ids.shape[1] != length or position_ids.shape[0] not in (1, batch):
                raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}, expected (B, T) or (1, T) "
                                 f"for input_ids {tuple(input_ids.shape)}")
            if position_ids.numel() and (position_ids.min() < 0 or position_ids.max() >= config.n_positions):
                raise ValueError(f"position_ids must lie in [0, n_positions={config.n_positions})")
        return past_len


def _check_encoder(config: GPT2Config, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                   encoder_attention_mask: torch.Tensor | None) -> None:
    """Cross-attention's inputs: only for a decoder built with it, and of the right shapes."""
    if encoder_hidden_states is None:
        if config.add_cross_attention:
            raise ValueError("this GPT-2 has cross-attention (add_cross_attention=True): give it "
                             "encoder_hidden_states (B, S, n_embd), the encoder's output")
        if encoder_attention_mask is not None:
            raise ValueError("encoder_attention_mask without encoder_hidden_states")
        return
    if not config.add_cross_attention:
        raise ValueError("encoder_hidden_states given, but this GPT-2 has no cross-attention; build it with "
                         "add_cross_attention=True (EncoderDecoderModel.from_encoder_decoder_pretrained does)")
    batch = input_ids.shape[0]
    if encoder_hidden_states.dim() != 3 or tuple(encoder_hidden_states.shape[::2]) != (batch, config.n_embd):
        raise ValueError(f"encoder_hidden_states has shape {tuple(encoder_hidden_states.shape)}, expected "
                         f"(B, S, n_embd) = ({batch}, S, {config.n_embd})")
    if encoder_attention_mask is not None and encoder_attention_mask.shape != encoder_hidden_states.shape[:2]:
        raise ValueError(f"encoder_attention_mask has shape {tuple(encoder_attention_mask.shape)}, expected (B, S) "
                         f"= {tuple(encoder_hidden_states.shape[:2])}")


# ----------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------


class GPT2LMHeadModel(GenerationMixin, GPT2PretrainedModel):
    """Next-token prediction (Radford et al. 2018, eq. 1); the output matrix is the token embedding
    matrix itself (weight tying, Press & Wolf 2017), one tensor under two names. `.generate` (greedy,
    sampling, beam search, with transformers' arguments) is GenerationMixin's, minift/generation/mixin.py."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()
        self._init_generation_config()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        **unsupported: Any,
    ) -> GPT2HeadOutput:
        """labels (B, T) may simply be input_ids: the shift happens here, so position t is scored on
        token t + 1; -100 marks positions that are not scored (e.g. padding).

        logits_to_keep: 0 computes logits at every position; n > 0 only at the last n, (B, n, vocab_size),
        as transformers' argument of that name. Generation needs only the last position's: on the
        prompt step that skips T - 1 of the T products with the (vocab_size, C) matrix, the largest in
        the model."""
        refuse_unsupported(self, unsupported)
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an integer >= 0 (0 = every position), got {logits_to_keep!r}")
        if logits_to_keep and labels is not None:
            raise ValueError("logits_to_keep and labels together: the loss needs the logits at every position")
        out = self.transformer(input_ids, attention_mask, position_ids, past_key_values, use_cache,
                               encoder_hidden_states, encoder_attention_mask)
        hidden = out.last_hidden_state  # (B, T, C); (B, n + T, C) with prompt tuning's n virtual tokens
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]  # (B, n, C)
        logits = self.lm_head(hidden)  # (B, T or n, vocab_size)
        loss = None
        virtual = 0 if past_key_values is not None or logits_to_keep else self.transformer.num_virtual_tokens
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels have shape {tuple(labels.shape)}, input_ids {tuple(input_ids.shape)}: "
                                 "one token id (or -100) per position")
            # Virtual tokens are labelled -100, as peft labels them: none is scored, but the last one
            # predicts the text's first token.
            labels = F.pad(labels, (virtual, 0), value=IGNORE_INDEX)  # (B, n + T)
            shifted_logits = logits[:, :-1].reshape(-1, self.config.vocab_size)  # predictions for 1..T-1
            loss = cross_entropy(shifted_logits, labels[:, 1:].reshape(-1))
        return GPT2HeadOutput(logits=logits[:, virtual:], loss=loss, past_key_values=out.past_key_values)


def last_token_index(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """Index of the rightmost token that is not padding, per row (B,), as transformers picks it: with
    left padding that is the last column, with right padding the last real token. A row that is all
    padding gives 0. Without a pad_token_id only a batch of one is unambiguous: its last column."""
    batch, length = input_ids.shape
    if pad_token_id is None:
        if batch != 1:
            raise ValueError(f"GPT2ForSequenceClassification: input_ids {tuple(input_ids.shape)} is a batch of "
                             f"{batch}, but config.pad_token_id is None, so the last real token of each row is "
                             "unknown; set pad_token_id (e.g. to the EOS id) or classify one sequence at a time")
        return torch.full((1,), length - 1, dtype=torch.long, device=input_ids.device)
    columns = torch.arange(length, device=input_ids.device)  # (T,)
    return (columns * (input_ids != pad_token_id)).argmax(-1)  # (B,): largest column holding a real token


class GPT2ForSequenceClassification(GPT2PretrainedModel):
    """One label per sequence from the last real token's state: in a causal model only the last
    token has seen the whole sequence (Radford et al. 2018, sec. 3.3, the extract token)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **unsupported: Any,
    ) -> GPT2HeadOutput:
        refuse_unsupported(self, unsupported)
        hidden = self.transformer(input_ids, attention_mask, position_ids).last_hidden_state  # (B, T, C)
        # + the virtual tokens of prompt tuning before the text (B, n + T, C)
        last = last_token_index(input_ids, self.config.pad_token_id) + self.transformer.num_virtual_tokens  # (B,)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, C)
        logits = self.score(pooled)  # (B, num_labels)
        loss = None if labels is None else self._loss(logits, labels)
        return GPT2HeadOutput(logits=logits, loss=loss)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sequence_classification_loss(logits, labels, self.config.num_labels, self.config.problem_type)


class GPT2ForTokenClassification(GPT2PretrainedModel):
    """One label per token from that token's state (which has seen only the tokens to its left);
    label -100 marks positions to skip. Dropout: config.classifier_dropout, else 0.1 (transformers)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.dropout = Dropout(0.1 if config.classifier_dropout is None else config.classifier_dropout)
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **unsupported: Any,
    ) -> GPT2HeadOutput:
        refuse_unsupported(self, unsupported)
        hidden = self.transformer(input_ids, attention_mask, position_ids).last_hidden_state  # (B, T, C)
        hidden = hidden[:, self.transformer.num_virtual_tokens:]  # the text's positions (prompt tuning)
        logits = self.classifier(self.dropout(hidden))  # (B, T, num_labels)
        loss = None if labels is None else token_classification_loss(logits, labels, input_ids)
        return GPT2HeadOutput(logits=logits, loss=loss)
