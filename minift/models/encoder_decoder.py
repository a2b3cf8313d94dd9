"""A sequence-to-sequence model warm-started from public checkpoints: a BERT encoder and a GPT-2 or
BERT decoder joined by new cross-attention layers (Rothe et al. 2020, "Leveraging Pre-trained
Checkpoints for Sequence Generation Tasks"), with the parameter names and config.json of
transformers' `EncoderDecoderModel`, so that each loads what the other saves.

Lesson: `lessons/40-warm-starting-seq2seq.md` (what the checkpoints give, what is new, what training learns).

    input_ids (B, S) -> encoder (BertModel) -> (B, S, H_enc) -> enc_to_dec_proj when H_enc != H_dec
    decoder_input_ids (B, T) -> decoder (GPT2LMHeadModel or BertLMHeadModel, add_cross_attention=True):
        each layer's cross-attention reads the encoder's output -> logits (B, T, V)

Parameters: `encoder.*` (the encoder checkpoint's own names), `decoder.*` (the decoder's, plus
`crossattention.*` in every layer, and GPT-2's `ln_cross_attn`), `enc_to_dec_proj.*`. config.json:
model_type "encoder-decoder", the two configs nested under "encoder" and "decoder", and the special
ids decoder_start_token_id, pad_token_id, eos_token_id at the top, as transformers' EncoderDecoderConfig.
`tests/test_encoder_decoder.py` checks logits, loss, gradients and decoding against transformers.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from typing_extensions import Self

from minift.checkpoint.files import CONFIG_NAME, CheckpointError, load_state_dict, read_config
from minift.checkpoint.load import copy_into, raise_or_warn
from minift.generation.config import GenerationConfig
from minift.generation.mixin import GenerationMixin
from minift.generation.seq2seq import generate, shift_tokens_right
from minift.losses import cross_entropy
from minift.models.bert import BertConfig, BertModel
from minift.models.bert_decoder import BertDecoderConfig, BertLMHeadModel
from minift.models.config import ConfigError, is_int
from minift.models.gpt2 import GPT2Config, GPT2LMHeadModel
from minift.models.pretrained import PretrainedModel, resolve_folder
from minift.outputs import ModelOutput, refuse_unsupported

# model_type -> (config class, model class): the encoders and the decoders minift can join.
ENCODERS: dict[str, tuple[type, type]] = {"bert": (BertConfig, BertModel)}
DECODERS: dict[str, tuple[type, type]] = {"bert": (BertDecoderConfig, BertLMHeadModel),
                                          "gpt2": (GPT2Config, GPT2LMHeadModel)}


def hidden_size(config: Any) -> int:
    return config.n_embd if isinstance(config, GPT2Config) else config.hidden_size


def max_positions(config: Any) -> int:
    return config.n_positions if isinstance(config, GPT2Config) else config.max_position_embeddings


def _sub_config(d: Any, role: str, table: dict[str, tuple[type, type]], source: str, warm_start: bool = False) -> Any:
    """The nested encoder or decoder config of config.json, read by its own config class; with
    `warm_start`, a plain checkpoint's config.json, which a decoder reads with cross-attention added."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: {role} must be a JSON object (the {role}'s config), got {type(d).__name__}")
    model_type = d.get("model_type")
    if model_type not in table:
        raise ConfigError(f"{source}: {role}.model_type={model_type!r}; minift joins a {role} of model_type "
                          f"{' or '.join(map(repr, table))}")
    d = dict(d)
    if role == "encoder":  # transformers turns a decoder checkpoint used as encoder back into an encoder
        d.pop("is_decoder", None), d.pop("add_cross_attention", None)
    else:
        if d.get("add_cross_attention") is False and not warm_start:
            raise ConfigError(f"{source}: decoder.add_cross_attention=false: the decoder would not read the encoder")
        d["add_cross_attention"] = True
        if model_type == "bert":
            d["is_decoder"] = True
    return table[model_type][0].from_dict(d, source=f"{source}: {role}")


@dataclass
class EncoderDecoderConfig:
    """transformers' EncoderDecoderConfig: the two configs and the special ids of the pair.

    decoder_start_token_id: the first token of every decoder input (teacher forcing's shift, and
    generation); pad_token_id: what replaces -100 in the shifted labels, and the decoder's padding;
    eos_token_id: where generation ends. None until set: forward with labels and generate then
    refuse, naming the missing value.
    """

    model_type: ClassVar[str] = "encoder-decoder"

    encoder: Any = None
    decoder: Any = None
    decoder_start_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | None = None
    bos_token_id: int | None = None
    tie_encoder_decoder: bool = False

    def __post_init__(self) -> None:
        self.validate(type(self).__name__)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> EncoderDecoderConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object of config keys, got {type(d).__name__}")
        if d.get("model_type", cls.model_type) != cls.model_type:
            raise ConfigError(f"{source}: model_type is {d.get('model_type')!r}, but EncoderDecoderConfig reads "
                              f"{cls.model_type!r} configs")
        for role in ("encoder", "decoder"):
            if role not in d:
                raise ConfigError(f"{source}: missing required key {role} (the {role}'s config)")
        config = cls.__new__(cls)
        for f in dataclasses.fields(cls):
            setattr(config, f.name, d.get(f.name, f.default))
        config.encoder = d["encoder"] if not isinstance(d["encoder"], dict) else _sub_config(d["encoder"], "encoder",
                                                                                             ENCODERS, source)
        config.decoder = d["decoder"] if not isinstance(d["decoder"], dict) else _sub_config(d["decoder"], "decoder",
                                                                                             DECODERS, source)
        config.validate(source)
        return config

    def validate(self, source: str) -> None:
        if not isinstance(self.encoder, tuple(c for c, _ in ENCODERS.values())):
            raise ConfigError(f"{source}: encoder must be one of {[c.__name__ for c, _ in ENCODERS.values()]}, "
                              f"got {type(self.encoder).__name__}")
        if not isinstance(self.decoder, tuple(c for c, _ in DECODERS.values())) or not self.decoder.add_cross_attention:
            raise ConfigError(f"{source}: decoder must be a GPT2Config or BertDecoderConfig with "
                              f"add_cross_attention=True, got {self.decoder!r}")
        vocab = self.decoder.vocab_size
        for key in ("decoder_start_token_id", "pad_token_id", "bos_token_id"):
            value = getattr(self, key)
            if value is not None and not (is_int(value) and 0 <= value < vocab):
                raise ConfigError(f"{source}: {key} must be null or a token id in [0, decoder.vocab_size={vocab}), "
                                  f"got {value!r}")
        eos = self.eos_token_id
        if eos is not None and not all(is_int(i) and 0 <= i < vocab for i in (eos if isinstance(eos, list) else [eos])):
            raise ConfigError(f"{source}: eos_token_id must be null or token id(s) in [0, {vocab}), got {eos!r}")
        if self.tie_encoder_decoder:
            raise ConfigError(f"{source}: tie_encoder_decoder=true (one set of weights for encoder and decoder) "
                              "is not supported by minift")

    def to_dict(self) -> dict[str, Any]:
        decoder = self.decoder.to_dict()
        decoder.update(is_decoder=True, add_cross_attention=True)
        return {"model_type": self.model_type, "is_encoder_decoder": True, "encoder": self.encoder.to_dict(),
                "decoder": decoder, "decoder_start_token_id": self.decoder_start_token_id,
                "pad_token_id": self.pad_token_id, "eos_token_id": self.eos_token_id,
                "bos_token_id": self.bos_token_id, "tie_encoder_decoder": self.tie_encoder_decoder}


@dataclass(eq=False)
class Seq2SeqLMOutput(ModelOutput):
    loss: torch.Tensor | None = None  # scalar, when labels were given
    logits: torch.Tensor = None  # (B, T, vocab_size)
    encoder_last_hidden_state: torch.Tensor | None = None  # (B, S, H_enc), before enc_to_dec_proj


class EncoderDecoderModel(GenerationMixin, PretrainedModel):
    """An encoder and a decoder with cross-attention; see the module docstring. Build it from two
    checkpoints with `from_encoder_decoder_pretrained(enc, dec)` (the cross-attention starts new), or
    load a saved pair with `from_pretrained(folder)` (minift's or transformers' files)."""

    config_class = EncoderDecoderConfig
    base_model_prefix = ""
    # What older transformers versions also saved: buffers (position ids, GPT-2's causal-mask `attn.bias`,
    # and its `crossattention.bias`) and the second name of BERT's LM-head bias.
    _keys_to_ignore_on_load = (r"position_ids$", r"\.attn\.(masked_)?bias$", r"\.crossattention\.(masked_)?bias$",
                               r"^decoder\.cls\.predictions\.decoder\.bias$")

    def __init__(self, config: EncoderDecoderConfig, encoder: nn.Module | None = None,
                 decoder: nn.Module | None = None) -> None:
        super().__init__(config)
        self.encoder = ENCODERS[config.encoder.model_type][1](config.encoder) if encoder is None else encoder
        self.decoder = DECODERS[config.decoder.model_type][1](config.decoder) if decoder is None else decoder
        self.encoder.config, self.decoder.config = config.encoder, config.decoder  # one config, as transformers
        h_enc, h_dec = config.encoder.hidden_size, hidden_size(config.decoder)
        if h_enc != h_dec:  # the decoder's cross-attention reads vectors of its own width
            self.enc_to_dec_proj = nn.Linear(h_enc, h_dec)
            with torch.no_grad():  # transformers' default init of a new Linear
                self.enc_to_dec_proj.weight.normal_(0.0, config.decoder.initializer_range)
                self.enc_to_dec_proj.bias.zero_()
        else:
            self.enc_to_dec_proj = None
        self._init_generation_config()

    @property
    def _tied_weights_keys(self) -> dict[str, str]:
        """The decoder's output embedding is its input embedding, under both names."""
        return {f"decoder.{t}": f"decoder.{s}" for t, s in type(self.decoder)._tied_weights_keys.items()
                if getattr(self.config.decoder, "tie_word_embeddings", True)}

    @property
    def _transposed_weights(self) -> tuple[str, ...]:
        """GPT-2's projections, stored (in, out) (minift/checkpoint/load.py): the decoder's patterns end
        in `$` and match under `decoder.` too."""
        return tuple(type(self.decoder)._transposed_weights)

    @property
    def decoder_max_positions(self) -> int:
        """The longest target the decoder's position table holds."""
        return max_positions(self.config.decoder)

    def _init_generation_config(self) -> None:
        """The special ids of config.json, decoder_start_token_id among them (kept in `extra`, as a
        generation_config.json entry that is not one of minift's settings)."""
        super()._init_generation_config()
        if self.config.decoder_start_token_id is not None:
            self.generation_config.extra["decoder_start_token_id"] = self.config.decoder_start_token_id

    # ------------------------------------------------------------------------------------------------
    # Building
    # ------------------------------------------------------------------------------------------------

    @classmethod
    def from_encoder_decoder_pretrained(cls, encoder_name_or_folder: str | os.PathLike,
                                        decoder_name_or_folder: str | os.PathLike, *, allow_pickle: bool = False,
                                        **config_overrides: Any) -> Self:
        """The encoder from one checkpoint, the decoder from another (they may be the same), as
        transformers' method of that name: the decoder's config gets is_decoder and add_cross_attention,
        so every decoder layer gains cross-attention weights, which start from the decoder's own
        initialisation (N(0, initializer_range)), as does an LM head the checkpoint lacks (a BERT
        checkpoint without `cls.predictions`). A warning lists every new weight. config_overrides:
        decoder_start_token_id=, pad_token_id=, eos_token_id= (transformers' are None too)."""
        encoder = _load_part(encoder_name_or_folder, "encoder", ENCODERS, allow_pickle)
        decoder = _load_part(decoder_name_or_folder, "decoder", DECODERS, allow_pickle)
        config = EncoderDecoderConfig(encoder=encoder.config, decoder=decoder.config, **config_overrides)
        return cls(config, encoder=encoder, decoder=decoder).eval()

    # ------------------------------------------------------------------------------------------------
    # The seq2seq interface (minift/generation/seq2seq.py)
    # ------------------------------------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The source (B, S) -> the encoder's output in the decoder's width (B, S, H_dec)."""
        hidden = self.encoder(input_ids, attention_mask).last_hidden_state  # (B, S, H_enc)
        return hidden if self.enc_to_dec_proj is None else self.enc_to_dec_proj(hidden)

    def decode(self, decoder_input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor,
               encoder_attention_mask: torch.Tensor | None, decoder_attention_mask: torch.Tensor | None = None,
               past_key_values: list | None = None, use_cache: bool = False) -> tuple[torch.Tensor, list | None]:
        """The decoder's logits (B, T, V) for decoder_input_ids (B, T) (the new tokens when the cache
        holds the earlier ones), and the cache: one tuple per layer, (k, v) of the target then (k, v)
        of the encoder, each with the batch in dim 0."""
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        length = past_len + decoder_input_ids.shape[1]
        if length > self.decoder_max_positions:
            raise ValueError(f"the target is {length} tokens long, but the decoder "
                             f"({self.config.decoder.model_type}) has only {self.decoder_max_positions} positions; "
                             "truncate the targets (or generate fewer tokens)")
        out = self.decoder(decoder_input_ids, attention_mask=decoder_attention_mask, past_key_values=past_key_values,
                           use_cache=use_cache, encoder_hidden_states=encoder_hidden_states,
                           encoder_attention_mask=encoder_attention_mask)
        return out.logits, out.past_key_values

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **unsupported: Any,
    ) -> Seq2SeqLMOutput:
        """Teacher forcing, with transformers' semantics: without decoder_input_ids they are the labels
        shifted right behind decoder_start_token_id (-100 -> pad_token_id), and then, without a
        decoder_attention_mask, it hides the pad_token_id positions. The loss: mean cross-entropy of
        the logits at every position against the labels at the same position, -100 not scored."""
        refuse_unsupported(self, unsupported)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("EncoderDecoderModel.forward: give decoder_input_ids, or labels to shift into them")
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)
            if decoder_attention_mask is None:
                decoder_attention_mask = (decoder_input_ids != self.config.pad_token_id).long()
        if labels is not None and labels.shape != decoder_input_ids.shape:
            raise ValueError(f"labels have shape {tuple(labels.shape)}, decoder_input_ids "
                             f"{tuple(decoder_input_ids.shape)}: one target id (or -100) per decoder position")
        encoder_hidden = self.encoder(input_ids, attention_mask).last_hidden_state  # (B, S, H_enc)
        memory = encoder_hidden if self.enc_to_dec_proj is None else self.enc_to_dec_proj(encoder_hidden)
        logits, _ = self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask)
        loss = None
        if labels is not None:
            loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return Seq2SeqLMOutput(loss=loss, logits=logits, encoder_last_hidden_state=encoder_hidden)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int | None = None, num_beams: int | None = None, do_sample: bool | None = None,
                 *, generation_config: GenerationConfig | None = None, **options: Any) -> Any:
        """The targets for the sources input_ids (B, S), starting with decoder_start_token_id; every
        setting of `minift.generation.seq2seq.generate`, defaults from `self.generation_config`."""
        base = self.generation_config
        if generation_config is not None:
            base = dataclasses.replace(base, **{k: v for k, v in vars(generation_config).items()
                                                if k in GenerationConfig.field_names() and v is not None})
        start = options.pop("decoder_start_token_id", None)  # the call's, the generation config's, config.json's
        if start is None:
            start = base.extra.get("decoder_start_token_id", self.config.decoder_start_token_id)
        return generate(self, input_ids, attention_mask, max_new_tokens, do_sample, num_beams=num_beams,
                        decoder_start_token_id=start, generation_config=base, **options)


def _load_part(name_or_folder: str | os.PathLike, role: str, table: dict[str, tuple[type, type]],
               allow_pickle: bool) -> nn.Module:
    """One half of from_encoder_decoder_pretrained: the checkpoint's config read for its role (a
    decoder gains cross-attention), the model built, the checkpoint's tensors copied in. Tensors the
    checkpoint lacks are allowed only where warm-starting makes them new: cross-attention, and a
    decoder's LM head; anything else missing is an error."""
    folder = resolve_folder(name_or_folder)
    config_dict = read_config(folder)
    config = _sub_config(config_dict, role, table, str(folder / CONFIG_NAME), warm_start=True)
    model = table[config.model_type][1](config)
    report = copy_into(model, load_state_dict(folder, allow_pickle=allow_pickle), source=str(folder))
    new = [n for n in report.missing if "crossattention" in n or "ln_cross_attn" in n]
    report.missing = [n for n in report.missing if n not in new]
    # The pooler is the encoder's, and a BERT decoder drops it (ignored on load): nothing else is unused.
    raise_or_warn(report, strict=True, stacklevel=4)
    new += report.newly_initialized
    if new:
        warnings.warn(f"{folder} as the {role}: {len(new)} tensors are new (randomly initialised, to be "
                      f"trained): {', '.join(_summarise(new))}", UserWarning, stacklevel=3)
    if role == "encoder" and not isinstance(model, BertModel):
        raise CheckpointError(f"{folder}: the encoder must be a BertModel")
    return model


def _summarise(names: list[str]) -> list[str]:
    """Layer indices collapsed: decoder.layer.{0..5}.crossattention.self.query.weight once, not six times."""
    import re

    return sorted({re.sub(r"\.\d+\.", ".N.", n) for n in names})
