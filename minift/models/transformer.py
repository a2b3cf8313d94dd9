"""The original Transformer (Vaswani et al. 2017, "Attention Is All You Need"): an encoder stack that
reads the source, a decoder stack that writes the target while reading the encoder, trained from
scratch (secs. 3.1-3.5, 5.3-5.4). Lesson: `lessons/39-the-transformer.md`.

    source ids (B, S) -> embed * sqrt(d_model) + sinusoids -> N x [self-attn, FFN]       -> memory (B, S, d)
    target ids (B, T) -> embed * sqrt(d_model) + sinusoids -> N x [masked self-attn,
                                                                 encoder-decoder attn (reads memory),
                                                                 FFN]                   -> logits (B, T, V)

The three uses of attention (sec. 3.2.3): the encoder's self-attention (every source token sees every
other, padding hidden), the decoder's masked self-attention (target position t sees 0..t), and the
encoder-decoder ("cross") attention, whose queries come from the decoder and whose keys and values
are the encoder's output, under the source's padding mask.

Each sub-layer is wrapped as in sec. 3.1, "LayerNorm(x + Sublayer(x))" (post-norm, `norm_first=False`,
the paper's), or as x + Sublayer(LayerNorm(x)) (pre-norm, `norm_first=True`, which trains deep stacks
without warmup tricks; Xiong et al. 2020) with a final LayerNorm after each stack.

Parity with `torch.nn.Transformer` (tests/test_transformer.py): the same weights give the same outputs
and gradients (<= 1e-5) with `norm_first` both ways. How the parameters map (ours <- torch's):

    encoder.layers.i.self_attn.{q,k,v}_proj   <- encoder.layers.i.self_attn.in_proj_{weight,bias} (thirds)
    encoder.layers.i.self_attn.out_proj       <- encoder.layers.i.self_attn.out_proj
    encoder.layers.i.fc1, fc2                 <- encoder.layers.i.linear1, linear2
    encoder.layers.i.self_attn_layer_norm     <- encoder.layers.i.norm1
    encoder.layers.i.final_layer_norm         <- encoder.layers.i.norm2
    decoder.layers.i.self_attn, encoder_attn  <- decoder.layers.i.self_attn, multihead_attn
    decoder.layers.i.{self_attn,encoder_attn,final}_layer_norm <- decoder.layers.i.norm1, norm2, norm3
    encoder.layer_norm, decoder.layer_norm    <- encoder.norm, decoder.norm (pre-norm only: torch adds
                                                 them to post-norm stacks too, the paper has none there)

torch.nn.Transformer has no embeddings, positions or output projection; ours are those of the paper
(sec. 3.4: one matrix for the source and target embeddings and the pre-softmax projection, scaled by
sqrt(d_model) on input). Parameter names follow transformers' encoder-decoders (Marian, BART).

The seq2seq interface every minift encoder-decoder shares (`encode`, `decode` with a batch-first
cache, `forward` with labels shifted right, `config.decoder_start_token_id`/`pad_token_id`) is what
generation drives.

Long because it holds one whole architecture, config to output layer, read top to bottom in lesson 39.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from minift.generation.mixin import GenerationMixin
from minift.generation.seq2seq import generate, shift_tokens_right
from minift.losses import cross_entropy
from minift.models.config import Check, ConfigError, PretrainedConfig, is_int
from minift.models.pretrained import PretrainedModel
from minift.nn.attention import attention, merge_heads, padding_mask, split_heads
from minift.nn.functional import ACTIVATION_NAMES, Dropout, LayerNorm, activation
from minift.nn.positions import sinusoidal_positions
from minift.outputs import ModelOutput, refuse_unsupported

# One entry per decoder layer: (self k, self v, cross k, cross v), each (B, H, T, D), batch first so that
# beam search reorders it with index_select(0, beam_idx). The self-attention pair grows by one position
# per step; the cross-attention pair is the encoder's, computed once at the first step.
Seq2SeqCache = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]

# Named sizes: "base" and "big" are the two rows of the paper's table 3 (N, d_model, d_ff, h, P_drop);
# "tiny" and "nano" train in minutes and seconds on a CPU (toy tasks, tests, the lesson).
SIZES: dict[str, dict[str, Any]] = {
    "big": {"layers": 6, "d_model": 1024, "ffn": 4096, "heads": 16, "dropout": 0.3},
    "base": {"layers": 6, "d_model": 512, "ffn": 2048, "heads": 8, "dropout": 0.1},
    "small": {"layers": 3, "d_model": 256, "ffn": 1024, "heads": 4, "dropout": 0.1},
    "tiny": {"layers": 2, "d_model": 64, "ffn": 256, "heads": 4, "dropout": 0.1},
    "nano": {"layers": 1, "d_model": 32, "ffn": 64, "heads": 2, "dropout": 0.0},
}


# max(0, x) is the paper's (eq. 2); BERT's and GPT-2's GELUs are allowed too (minift/nn/functional.py).
ACTIVATIONS = ("relu", *ACTIVATION_NAMES)


def feed_forward_activation(name: str, fast: bool):
    """ReLU (its derivative, 1[x > 0], needs no hand-written backward), or a GELU of minift/nn/functional.py."""
    return torch.relu if name == "relu" else activation(name, fast=fast)


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass
class TransformerConfig(PretrainedConfig):
    """The fields of the model's config.json; defaults are the paper's base model (table 3) with
    post-norm. One vocabulary for source and target (the paper's shared BPE vocabulary, sec. 5.1).

    share_embeddings: the encoder and decoder read one embedding matrix (sec. 3.4);
    tie_word_embeddings: the pre-softmax projection is that matrix too (sec. 3.4, Press & Wolf 2017).
    norm_first: pre-norm instead of the paper's post-norm (torch.nn.Transformer's name).
    scale_embedding: multiply the embeddings by sqrt(d_model) (sec. 3.4).
    max_position_embeddings: rows of the sinusoid table, the longest source or target.
    """

    model_type: ClassVar[str] = "transformer"
    required: ClassVar[tuple[str, ...]] = ("vocab_size",)

    vocab_size: int = 37000
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    activation_function: str = "relu"
    dropout: float = 0.1  # P_drop: sub-layer outputs and embedding sums (sec. 5.4)
    attention_dropout: float = 0.0  # on the attention probabilities (not in the paper; torch's default uses dropout)
    activation_dropout: float = 0.0  # inside the FFN, after the activation (ditto)
    max_position_embeddings: int = 512
    norm_first: bool = False
    layer_norm_eps: float = 1e-5
    scale_embedding: bool = True
    share_embeddings: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 1
    init_std: float | None = None  # embeddings ~ N(0, init_std); None: d_model^-0.5 (see _init_weights)
    initializer_range: float = 0.02  # shared with every minift config; unused here (Xavier, see _init_weights)
    classifier_dropout: float | None = None
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    attn_impl: str = "eager"

    @classmethod
    def from_size(cls, size: str, vocab_size: int, **overrides: Any) -> TransformerConfig:
        """A config of a named size (SIZES) for a vocabulary of `vocab_size` tokens."""
        if size not in SIZES:
            raise ConfigError(f"unknown Transformer size {size!r}; choose one of {', '.join(SIZES)}")
        s = SIZES[size]
        shape = {"d_model": s["d_model"], "encoder_layers": s["layers"], "decoder_layers": s["layers"],
                 "encoder_attention_heads": s["heads"], "decoder_attention_heads": s["heads"],
                 "encoder_ffn_dim": s["ffn"], "decoder_ffn_dim": s["ffn"], "dropout": s["dropout"]}
        return cls(vocab_size=vocab_size, **{**shape, **overrides})

    def _check(self, check: Check) -> None:
        check.positive_int("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                           "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings")
        check.probability("dropout", "attention_dropout", "activation_dropout")
        check.non_negative("layer_norm_eps")
        check.one_of("activation_function", ACTIVATIONS)
        for key in ("norm_first", "scale_embedding", "share_embeddings"):
            check.boolean(key)
        check.divisible("d_model", "encoder_attention_heads")
        check.divisible("d_model", "decoder_attention_heads")
        if self.init_std is not None:
            check.non_negative("init_std")
        for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, key)
            if value is not None and not (is_int(value) and 0 <= value < self.vocab_size):
                check.fail(key, f"null or a token id in [0, vocab_size={self.vocab_size})")


# ----------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Seq2SeqLMOutput(ModelOutput):
    """transformers' name and field order (loss first)."""

    loss: torch.Tensor | None = None  # scalar, when labels were given
    logits: torch.Tensor = None  # (B, T, vocab_size)
    past_key_values: Seq2SeqCache | None = None
    encoder_last_hidden_state: torch.Tensor | None = None  # (B, S, d_model)


# ----------------------------------------------------------------------------------------------------
# The layers
# ----------------------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)
    (sec. 3.2.2). The h heads' W_i are the column blocks of one (d_model, d_model) matrix each.

    Queries and keys/values are projected separately, since in cross-attention they come from two
    sequences: `keys_values(states)` projects the sequence attended to (the decoder's own tokens, or
    the encoder's output once per generated sequence), `forward(x, k, v, ...)` attends from x."""

    def __init__(self, d_model: int, heads: int, dropout: float, impl: str) -> None:
        super().__init__()
        self.heads, self.dropout, self.impl = heads, dropout, impl
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def keys_values(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """states (B, Tk, d) -> k, v (B, H, Tk, D)."""
        return split_heads(self.k_proj(states), self.heads), split_heads(self.v_proj(states), self.heads)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                is_causal: bool = False) -> torch.Tensor:
        """x (B, Tq, d) attends over k, v (B, H, Tk, D) -> (B, Tq, d)."""
        q = split_heads(self.q_proj(x), self.heads)  # (B, H, Tq, D)
        out = attention(q, k, v, mask, dropout_p=self.dropout, training=self.training, is_causal=is_causal,
                        impl=self.impl)  # (B, H, Tq, D)
        return self.out_proj(merge_heads(out))  # (B, Tq, d)


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, the same at every position (sec. 3.3, eq. 2)."""

    def __init__(self, d_model: int, ffn_dim: int, config: TransformerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.act = feed_forward_activation(config.activation_function, fast=config.attn_impl == "sdpa")
        self.activation_dropout = Dropout(config.activation_dropout)
        self.fc2 = nn.Linear(ffn_dim, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_dropout(self.act(self.fc1(x))))


class SublayerStack(nn.Module):
    """What the encoder and decoder layers share: the wrapping of each sub-layer (sec. 3.1),
    LayerNorm(x + Dropout(Sublayer(x))) in post-norm, x + Dropout(Sublayer(LayerNorm(x))) in
    pre-norm. Dropout on the sub-layer's output before the sum is the paper's residual dropout
    (sec. 5.4)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.dropout = Dropout(config.dropout)
        self.norm_first = config.norm_first

    def _norm(self, config: TransformerConfig) -> LayerNorm:
        return LayerNorm(config.d_model, eps=config.layer_norm_eps, fast=config.attn_impl == "sdpa")

    def residual(self, x: torch.Tensor, norm: LayerNorm, sublayer) -> torch.Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(norm(x)))
        return norm(x + self.dropout(sublayer(x)))


class EncoderLayer(SublayerStack):
    """Self-attention over the source, then the FFN, each wrapped (sec. 3.1, "Encoder")."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        d = config.d_model
        self.self_attn = MultiHeadAttention(d, config.encoder_attention_heads, config.attention_dropout,
                                            config.attn_impl)
        self.self_attn_layer_norm = self._norm(config)
        self.ffn = FeedForward(d, config.encoder_ffn_dim, config)
        self.final_layer_norm = self._norm(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.residual(x, self.self_attn_layer_norm, lambda h: self.self_attn(h, *self.self_attn.keys_values(h), mask))
        return self.residual(x, self.final_layer_norm, self.ffn)


class DecoderLayer(SublayerStack):
    """Masked self-attention over the target so far, attention over the encoder's output, then the
    FFN, each wrapped (sec. 3.1, "Decoder"). With a cache, x holds only the new positions."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        d, heads = config.d_model, config.decoder_attention_heads
        self.self_attn = MultiHeadAttention(d, heads, config.attention_dropout, config.attn_impl)
        self.self_attn_layer_norm = self._norm(config)
        self.encoder_attn = MultiHeadAttention(d, heads, config.attention_dropout, config.attn_impl)
        self.encoder_attn_layer_norm = self._norm(config)
        self.ffn = FeedForward(d, config.decoder_ffn_dim, config)
        self.final_layer_norm = self._norm(config)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, self_mask: torch.Tensor | None,
                memory_mask: torch.Tensor | None, past: tuple | None) -> tuple[torch.Tensor, tuple]:
        """x (B, T, d); memory (B, S, d) the encoder's output; masks additive -> (B, T, d), this layer's cache."""
        present: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def self_attention(h: torch.Tensor) -> torch.Tensor:
            k, v = self.self_attn.keys_values(h)  # (B, H, T, D): the new positions
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, T_past + T, D)
            present["self"] = (k, v)
            return self.self_attn(h, k, v, self_mask, is_causal=True)  # position t sees 0..t only

        def cross_attention(h: torch.Tensor) -> torch.Tensor:
            # The encoder's keys and values do not change while decoding: projected once, then cached.
            k, v = (past[2], past[3]) if past is not None else self.encoder_attn.keys_values(memory)
            present["cross"] = (k, v)
            return self.encoder_attn(h, k, v, memory_mask)  # every target position sees every source token

        x = self.residual(x, self.self_attn_layer_norm, self_attention)
        x = self.residual(x, self.encoder_attn_layer_norm, cross_attention)
        x = self.residual(x, self.final_layer_norm, self.ffn)
        return x, (*present["self"], *present["cross"])


class Stack(nn.Module):
    """What the encoder and decoder stacks share: the input embedding, token embedding x
    sqrt(d_model) (sec. 3.4) + the sinusoid of each position (sec. 3.5), then dropout (sec. 5.4);
    and the final LayerNorm of pre-norm (its layers' outputs are an un-normalised residual stream).
    The sinusoid table is a buffer computed from the formula, not a weight: it is not saved."""

    def __init__(self, config: TransformerConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.register_buffer("embed_positions", sinusoidal_positions(config.max_position_embeddings,
                                                                     config.d_model), persistent=False)
        self.dropout = Dropout(config.dropout)
        fast = config.attn_impl == "sdpa"
        self.layer_norm = LayerNorm(config.d_model, eps=config.layer_norm_eps, fast=fast) if config.norm_first else None

    def embed(self, input_ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """input_ids (B, T) at positions offset .. offset + T - 1 -> (B, T, d)."""
        length, limit = input_ids.shape[1], self.embed_positions.shape[0]
        if offset + length > limit:
            raise ValueError(f"a sequence of {offset + length} tokens ({offset} cached + {length} new) is longer than "
                             f"max_position_embeddings={limit}, the Transformer's position limit; shorten it or "
                             "build the model with a larger max_position_embeddings")
        x = self.embed_tokens(input_ids) * self.embed_scale  # (B, T, d)
        return self.dropout(x + self.embed_positions[offset: offset + length].to(x.dtype))

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.layer_norm is None else self.layer_norm(x)


class TransformerEncoder(Stack):
    """N encoder layers over the embedded source (a final LayerNorm in pre-norm)."""

    def __init__(self, config: TransformerConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__(config, embed_tokens)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.stack(self.embed(input_ids), attention_mask)

    def stack(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The layers alone, on embedded x (B, S, d): what torch.nn.TransformerEncoder computes."""
        mask = None if attention_mask is None else padding_mask(attention_mask, x.dtype)  # (B, 1, 1, S)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)


class TransformerDecoder(Stack):
    """N decoder layers over the embedded target, reading the encoder's output (a final LayerNorm in
    pre-norm). Returns hidden states; the output projection is the model's `lm_head`."""

    def __init__(self, config: TransformerConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__(config, embed_tokens)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))

    def forward(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
                decoder_attention_mask: torch.Tensor | None = None,
                past: Seq2SeqCache | None = None) -> tuple[torch.Tensor, Seq2SeqCache]:
        past_len = 0 if past is None else past[0][0].shape[2]
        return self.stack(self.embed(decoder_input_ids, offset=past_len), memory, memory_mask,
                          decoder_attention_mask, past)

    def stack(self, y: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
              decoder_attention_mask: torch.Tensor | None = None,
              past: Seq2SeqCache | None = None) -> tuple[torch.Tensor, Seq2SeqCache]:
        """The layers alone, on embedded y (B, T, d): what torch.nn.TransformerDecoder computes (with
        a causal tgt_mask). memory_mask / decoder_attention_mask: 0/1 (B, S) / (B, T_past + T)."""
        self_mask = None if decoder_attention_mask is None else padding_mask(decoder_attention_mask, y.dtype)
        cross_mask = None if memory_mask is None else padding_mask(memory_mask, y.dtype)
        presents = []
        for i, layer in enumerate(self.layers):
            y, present = layer(y, memory, self_mask, cross_mask, None if past is None else past[i])
            presents.append(present)
        return self.final_norm(y), presents


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------


class Transformer(GenerationMixin, PretrainedModel):
    """The encoder-decoder of Vaswani et al. 2017 with its output projection: source -> target logits.

    `encode` / `decode` / `forward` are the seq2seq interface every minift encoder-decoder shares;
    `generate` is minift/generation/seq2seq.py's (greedy, sampling, beam search)."""

    config_class = TransformerConfig
    base_model_prefix = ""
    _ties_follow_config = True  # share_embeddings and tie_word_embeddings each add a tie (minift/checkpoint/load.py)

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        # Shared source/target embeddings and the tied output projection are declared as ties (one
        # tensor, several names), so the checkpoint stores the matrix once.
        tied = {}
        if config.share_embeddings:
            tied["encoder.embed_tokens.weight"] = "decoder.embed_tokens.weight"
        if config.tie_word_embeddings:
            tied["lm_head.weight"] = "decoder.embed_tokens.weight"
        self._tied_weights_keys = tied
        self.encoder = TransformerEncoder(config, nn.Embedding(config.vocab_size, config.d_model))
        self.decoder = TransformerDecoder(config, nn.Embedding(config.vocab_size, config.d_model))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()
        self._init_generation_config()  # generation_config.json: eos and pad from config.json

    @property
    def decoder_max_positions(self) -> int:
        """The longest target the sinusoid table covers (generation checks it before decoding)."""
        return self.config.max_position_embeddings

    def _init_weights(self, module: nn.Module) -> None:
        """Xavier-uniform projections and zero biases (as torch.nn.Transformer and tensor2tensor);
        embeddings N(0, d_model^-0.5), so that x sqrt(d_model) gives them unit variance, the scale of
        the sinusoids they are added to (as fairseq and tensor2tensor)."""
        with torch.no_grad():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    module.bias.zero_()
            if isinstance(module, nn.Embedding):
                std = self.config.init_std if self.config.init_std is not None else self.config.d_model ** -0.5
                module.weight.normal_(0.0, std)
            if isinstance(module, LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    # --- the seq2seq interface ------------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids (B, S), 0/1 mask (B, S) -> the encoder's output (B, S, d_model)."""
        _check_ids("input_ids", input_ids, self.config.vocab_size)
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                             f"{tuple(input_ids.shape)}: one 0/1 per source token")
        return self.encoder(input_ids, attention_mask)

    def decode(self, decoder_input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor,
               encoder_attention_mask: torch.Tensor | None, decoder_attention_mask: torch.Tensor | None = None,
               past_key_values: Seq2SeqCache | None = None,
               use_cache: bool = False) -> tuple[torch.Tensor, Seq2SeqCache | None]:
        """Target ids (B, T) (only the new ones when past_key_values holds the earlier) reading the encoder's
        output (B, S, d) -> logits (B, T, V) and, with use_cache, the cache including these positions."""
        _check_ids("decoder_input_ids", decoder_input_ids, self.config.vocab_size)
        if past_key_values is not None and len(past_key_values) != self.config.decoder_layers:
            raise ValueError(f"past_key_values has {len(past_key_values)} entries, expected one per decoder layer "
                             f"({self.config.decoder_layers})")
        hidden, presents = self.decoder(decoder_input_ids, encoder_hidden_states, encoder_attention_mask,
                                        decoder_attention_mask, past_key_values)
        return self.lm_head(hidden), (presents if use_cache else None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **unsupported: Any) -> Seq2SeqLMOutput:
        """Teacher forcing: the target is read whole, position t predicting labels[t] from labels[:t].
        Without decoder_input_ids they are labels shifted right (`shift_tokens_right`); labels -100 are
        not scored. The loss is the mean cross-entropy over scored tokens (label smoothing, sec. 5.4, is
        the training objective's: --label-smoothing, minift/train/objective.py)."""
        refuse_unsupported(self, unsupported)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("Transformer.forward needs decoder_input_ids or labels (from which they are built)")
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id,
                                                   self.config.decoder_start_token_id)
        memory = self.encode(input_ids, attention_mask)
        logits, _ = self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask)
        loss = None
        if labels is not None:
            if labels.shape != decoder_input_ids.shape:
                raise ValueError(f"labels have shape {tuple(labels.shape)}, decoder_input_ids "
                                 f"{tuple(decoder_input_ids.shape)}: one target id (or -100) per decoder position")
            loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return Seq2SeqLMOutput(loss=loss, logits=logits, encoder_last_hidden_state=memory)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int | None = None, num_beams: int | None = None, do_sample: bool | None = None,
                 **options: Any) -> Any:
        """Targets for the sources input_ids (B, S), starting with decoder_start_token_id: greedy,
        sampling or beam search with every setting of `minift.generation.seq2seq.generate`; defaults
        from `self.generation_config` (end of sequence and padding from config.json)."""
        return generate(self, input_ids, attention_mask, max_new_tokens, do_sample, num_beams=num_beams,
                        generation_config=options.pop("generation_config", self.generation_config), **options)


@torch.no_grad()
def copy_from_torch_transformer(model: Transformer, reference: nn.Transformer) -> None:
    """Copy a `torch.nn.Transformer`'s (batch_first or not) layer weights into ``model``'s stacks: the
    mapping of the module docstring, as code. Embeddings and the output projection are ours alone."""
    for stack in ("encoder", "decoder"):
        ours, theirs = getattr(model, stack).layers, getattr(reference, stack).layers
        if len(ours) != len(theirs):
            raise ValueError(f"{stack}: {len(theirs)} torch layers for {len(ours)} of ours")
        for layer, other in zip(ours, theirs):
            attentions = [(layer.self_attn, other.self_attn)]
            norms = [layer.self_attn_layer_norm]
            if stack == "decoder":
                attentions.append((layer.encoder_attn, other.multihead_attn))
                norms.append(layer.encoder_attn_layer_norm)
            for mine, torch_attention in attentions:  # in_proj is [W_q; W_k; W_v], stacked by rows
                for proj, weight, bias in zip((mine.q_proj, mine.k_proj, mine.v_proj),
                                              torch_attention.in_proj_weight.chunk(3),
                                              torch_attention.in_proj_bias.chunk(3)):
                    proj.weight.copy_(weight)
                    proj.bias.copy_(bias)
                mine.out_proj.load_state_dict(torch_attention.out_proj.state_dict())
            layer.ffn.fc1.load_state_dict(other.linear1.state_dict())
            layer.ffn.fc2.load_state_dict(other.linear2.state_dict())
            for i, norm in enumerate([*norms, layer.final_layer_norm], start=1):  # norm1, norm2 (, norm3)
                norm.load_state_dict(getattr(other, f"norm{i}").state_dict())
        if model.config.norm_first:
            getattr(model, stack).layer_norm.load_state_dict(getattr(reference, stack).norm.state_dict())


def _check_ids(name: str, ids: Any, vocab_size: int) -> None:
    """A bad id is a deep IndexError inside the embedding: caught here, by name."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        found = f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"{name} must be a (batch, length) integer tensor, got {found}")
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise ValueError(f"{name} holds {bad}, outside [0, vocab_size={vocab_size})")
