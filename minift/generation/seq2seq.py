"""Sequence-to-sequence models: teacher forcing's shifted decoder inputs, and decoding (greedy,
sampling, beam search) for any model with an encoder and a decoder that reads it.

Lessons: lessons/40-warm-starting-seq2seq.md (the warm-started EncoderDecoderModel); lessons/16 and 32
for the decoding rules themselves, which are the decoder-only ones (minift/generate.py, beam.py).

The interface a seq2seq model offers (minift/models/encoder_decoder.py; the original Transformer):
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id;
    encode(input_ids, attention_mask) -> encoder_hidden_states (B, S, H_dec);
    decode(decoder_input_ids, encoder_hidden_states, encoder_attention_mask, decoder_attention_mask=None,
           past_key_values=None, use_cache=False) -> (logits (B, T, V), past_key_values),
    the cache a list with one tuple of tensors per decoder layer, dim 0 the batch;
    decoder_max_positions: the longest target the decoder's position table holds (None: no limit).

Decoding as transformers' generate does it for an encoder-decoder (generation/utils.py, 5.x): run the
encoder once; repeat its output num_beams times (one copy per beam, or per returned sample); start
every target with decoder_start_token_id; then, one step per token, run only the decoder, on the new
token, with the cache of its own keys/values and of the encoder's (minift/nn/attention.py,
`cross_attention_kv`). Beam search reorders every cached tensor along dim 0 with the beams. The
sequences returned are the decoder's, starting with decoder_start_token_id, as transformers' are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from minift.generate import logits_processors, sample_loop
from minift.generation.beam import beam_search
from minift.generation.config import GenerationConfig, resolve
from minift.generation.stopping import finished
from minift.outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int | None, decoder_start_token_id: int | None) -> torch.Tensor:
    """Teacher forcing's decoder inputs (B, T) from the labels (B, T): decoder_start_token_id, then the
    labels but the last, -100 replaced by pad_token_id (transformers' `shift_tokens_right`). Position t
    then reads the target up to t - 1 and is scored on target t."""
    if decoder_start_token_id is None:
        raise ValueError("decoder_start_token_id is None: set config.decoder_start_token_id to the id every "
                         "target starts with (e.g. the tokenizer's [CLS] for a BERT decoder, as transformers does)")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None: set config.pad_token_id, which replaces -100 in the shifted "
                         "labels (e.g. the tokenizer's [PAD])")
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


class Seq2SeqStep:
    """`step(sequences, reorder) -> logits (N, V)` for minift/generation/beam.py and generate.py's
    `sample_loop`: the decoder's last-position float32 logits after `sequences` (N, L), reading the
    encoder's output computed once. With the cache, only the tokens it has not seen are fed (one per
    step), after reordering every cached tensor as `reorder` says; without it, the whole target."""

    def __init__(self, model: Any, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None,
                 use_cache: bool) -> None:
        self.model, self.use_cache = model, use_cache
        self.encoder_hidden_states, self.encoder_attention_mask = encoder_hidden_states, encoder_attention_mask
        self.past, self.seen = None, 0

    def __call__(self, sequences: torch.Tensor, reorder: torch.Tensor | None = None) -> torch.Tensor:
        if reorder is not None and self.past is not None:
            # Each row continues row reorder[i]: the decoder's keys/values and the encoder's copy alike.
            self.past = [tuple(t.index_select(0, reorder) for t in layer) for layer in self.past]
        fed = sequences[:, self.seen:] if self.use_cache else sequences  # (N, T_step)
        logits, past = self.model.decode(fed, self.encoder_hidden_states, self.encoder_attention_mask,
                                         past_key_values=self.past, use_cache=self.use_cache)
        self.past, self.seen = (past if self.use_cache else None), sequences.shape[1]
        if not torch.isfinite(logits[:, -1]).all():
            raise ValueError(f"generate: the decoder's logits hold NaN or infinity at new token {sequences.shape[1]}: "
                             "its weights are not finite (a diverged run?)")
        return logits[:, -1].float().contiguous()  # (N, V)


def _check_args(input_ids: Any, attention_mask: torch.Tensor | None) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"generate: input_ids must be a non-empty (batch, source_len) tensor, got {shape}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"generate: attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                         f"{tuple(input_ids.shape)}: they must be equal")


def generate(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    *,
    decoder_start_token_id: int | None = None,
    generation_config: GenerationConfig | None = None,
    **options: Any,
) -> torch.Tensor | GenerateDecoderOnlyOutput | GenerateBeamDecoderOnlyOutput:
    """The targets of the sources input_ids (B, S): a LongTensor (N, 1 + new) starting with
    decoder_start_token_id (N = B x num_return_sequences), as transformers' generate returns for an
    encoder-decoder. The settings are minift/generation/config.py's (num_beams, length_penalty,
    early_stopping, num_return_sequences, repetition_penalty, no_repeat_ngram_size, bad_words_ids,
    min_new_tokens, return_dict_in_generate, output_scores, ...); None means "not given": then
    `generation_config`'s, then transformers' defaults. decoder_start_token_id: else model.config's.
    Sources of different lengths are padded on either side with attention_mask marking the padding
    (the encoder sees the whole source at once, so the side does not matter)."""
    given = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature, "top_k": top_k,
             "top_p": top_p, "use_cache": use_cache, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
             **options}
    if given.get("stop_strings") is not None:
        raise ValueError("generate: stop_strings are not implemented for seq2seq models; use eos_token_id")
    s = resolve(given, generation_config, 1, getattr(model, "decoder_max_positions", None))
    _check_args(input_ids, attention_mask)
    start = model.config.decoder_start_token_id if decoder_start_token_id is None else decoder_start_token_id
    if start is None:
        raise ValueError("generate: decoder_start_token_id is None; pass decoder_start_token_id= or set "
                         "model.config.decoder_start_token_id (the id every target starts with)")
    limit = getattr(model, "decoder_max_positions", None)
    if limit is not None and s.max_length > limit:
        raise ValueError(f"generate: 1 start token + max_new_tokens ({s.max_length - 1}) = {s.max_length} exceeds "
                         f"the decoder's {limit} positions; ask for fewer tokens")
    input_ids = input_ids.long()
    if attention_mask is None and s.pad_token_id is not None and (
            s.eos_token_id is None or s.pad_token_id not in s.eos_token_id) and bool((input_ids == s.pad_token_id).any()):
        attention_mask = (input_ids != s.pad_token_id).long()  # transformers' rule, as in minift/generate.py
    expand = max(s.num_beams, s.num_return_sequences)
    process = logits_processors(s, None, beams=s.num_beams > 1)

    def is_done(sequences: torch.Tensor) -> torch.Tensor:
        return finished(sequences, s.max_length, s.eos_token_id, None)

    with torch.no_grad():
        encoded = model.encode(input_ids, attention_mask).repeat_interleave(expand, dim=0)  # (N, S, H_dec)
        mask = None if attention_mask is None else attention_mask.repeat_interleave(expand, dim=0)
        targets = torch.full((encoded.shape[0], 1), start, dtype=torch.long, device=input_ids.device)
        step = Seq2SeqStep(model, encoded, mask, s.use_cache)
        if s.num_beams > 1:
            fill = -1 if s.eos_token_id is None else (s.pad_token_id or s.eos_token_id[0])
            result = beam_search(step, targets, num_beams=s.num_beams, max_length=s.max_length, process=process,
                                 is_done=is_done, length_penalty=s.length_penalty, early_stopping=s.early_stopping,
                                 num_return_sequences=s.num_return_sequences, n_eos=len(s.eos_token_id or []),
                                 fill_value=fill, do_sample=s.do_sample, generator=generator,
                                 keep_scores=s.return_dict_in_generate and s.output_scores,
                                 keep_logits=s.return_dict_in_generate and s.output_logits)
            if not s.return_dict_in_generate:
                return result.sequences
            return GenerateBeamDecoderOnlyOutput(
                sequences=result.sequences, sequences_scores=result.sequences_scores if s.output_scores else None,
                scores=result.scores, logits=result.logits, beam_indices=result.beam_indices)
        tokens, scores, raw = sample_loop(step, targets, s, process, is_done, generator)
    if not s.return_dict_in_generate:
        return tokens
    return GenerateDecoderOnlyOutput(sequences=tokens, scores=scores, logits=raw)
