"""Text generation with a causal language model: greedy decoding, temperature, top-k and top-p
(nucleus) sampling, and the KV cache that makes each new token cost one position, not the whole prefix;
and `generate`, the front door to every decoding strategy, with transformers' arguments.

Lesson: `lessons/16-generation.md` (the decoding rules, the cache and its memory/time arithmetic);
`lessons/32-decoding-strategies.md` (beam search, the repetition controls, stopping, streaming).

`generate` works with any model whose forward takes `(input_ids, attention_mask=, position_ids=,
past_key_values=, use_cache=, logits_to_keep=)` and returns `.logits` (B, T or logits_to_keep, vocab)
and `.past_key_values`, and whose config has `n_positions`: minift's GPT2LMHeadModel
(minift/models/gpt2.py), whose `.generate` (minift/generation/mixin.py) calls it. `CausalLMStep` runs
such a model one step at a time; greedy decoding and sampling are `sample_loop` below, beam search
is minift/generation/beam.py, both fed by the same step. For a left-padded batch it passes the
positions that skip the padding (`position_ids_from_mask`), as transformers' generate does; the
model's forward, like transformers', numbers positions 0, 1, ... whatever the mask (lesson 15).
The settings and their defaults are minift/generation/config.py; the repetition controls
minift/generation/processors.py; stopping minift/generation/stopping.py.
`tests/test_generate.py` checks greedy decoding token for token against `transformers`' `generate`,
and the three sampling filters against its logits warpers; tests/test_generate_beam.py and
tests/test_generate_options.py every other mode and option.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from minift.generation.beam import beam_search
from minift.generation.config import GenerationConfig, Settings, resolve
from minift.generation.processors import ban_words, forbid_eos, no_repeat_ngram, repetition_penalty
from minift.generation.stopping import StopStrings, finished
from minift.generation.streamer import stream_end, stream_put
from minift.nn.functional import softmax
from minift.outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / T: softmax(z / T) is sharper than softmax(z) for T < 1 (T -> 0 is greedy) and
    flatter for T > 1 (T -> inf is uniform); the order of the tokens never changes."""
    return logits / temperature


def top_k_filter(logits: torch.Tensor, top_k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept), set the rest to -inf
    (Fan et al. 2018, sec. 5.4). logits (B, V) -> (B, V). Beam sampling keeps at least
    `min_tokens_to_keep`, so that a beam can go on past an end-of-sequence token."""
    top_k = min(max(top_k, min_tokens_to_keep), logits.shape[-1])
    kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2019, sec. 3.1, eq. 2): keep the smallest set of most
    probable tokens whose probability adds up to at least top_p; set the rest to -inf.

    In descending order of probability a token is kept iff the tokens ranked above it hold less
    than top_p: the first token is always kept (nothing is above it), and the token that makes the
    sum reach top_p is the last one kept (and at least the first `min_tokens_to_keep`).
    logits (B, V) -> (B, V).
    """
    if top_p >= 1.0:  # the whole vocabulary is the nucleus
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V) each
    probs = softmax(sorted_logits, dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs  # (B, V): probability of the tokens ranked higher
    remove_sorted = mass_above >= top_p
    remove_sorted[..., :min_tokens_to_keep] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def next_token(
    logits: torch.Tensor,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row from the last position's logits (B, V) -> (B,).

    Greedy: the argmax. Sampling: temperature, then top-k, then top-p (the order transformers
    applies them in), then one draw from the softmax of what is left.
    """
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits.float(), temperature)
    if top_k:  # None or 0: no top-k
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = softmax(logits, dim=-1)  # -inf entries get probability 0
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def position_ids_from_mask(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Positions that skip left padding: each real token's position counts the real tokens before
    it, so a left-padded prompt gets the positions 0, 1, ... it would have unpadded. This is
    transformers' generate (`_prepare_position_ids_for_generation`: cumsum(mask) - 1, padding set to
    0). attention_mask (B, T_past + T) -> positions of the last `length` tokens (B, length); padding
    gets position 0 (its output is never used)."""
    positions = attention_mask.long().cumsum(-1) - 1  # (B, T_past + T)
    return positions.masked_fill(attention_mask == 0, 0)[:, -length:]




# ----------------------------------------------------------------------------------------------------
# One step of a decoder-only model, for greedy decoding, sampling and beam search alike
# ----------------------------------------------------------------------------------------------------


class CausalLMStep:
    """`step(sequences, reorder) -> logits (N, V)` for a decoder-only model (minift/generation/beam.py
    describes the protocol): the last position's float32 logits after `sequences` (N, L).

    With the cache it feeds only the tokens the cache has not seen (the prompt, then one token per
    step), after reordering the cache rows as `reorder` says (beam search moves beams between rows);
    without it, the whole prefix every step. The attention mask grows by a column of ones per step,
    and a left-padded batch gets the positions that skip its padding.
    """

    def __init__(self, model: Any, attention_mask: torch.Tensor | None, use_cache: bool) -> None:
        self.model, self.mask, self.use_cache = model, attention_mask, use_cache
        self.past, self.seen = None, 0  # the cache and how many tokens it holds
        self.prompt_length: int | None = None

    def __call__(self, sequences: torch.Tensor, reorder: torch.Tensor | None = None) -> torch.Tensor:
        if self.mask is not None and self.mask.shape[1] < sequences.shape[1]:
            grow = sequences.shape[1] - self.mask.shape[1]
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], grow)], dim=1)
        if reorder is not None and self.past is not None:
            self.past = [(k[reorder], v[reorder]) for k, v in self.past]  # each row continues row reorder[i]
        fed = sequences[:, self.seen:] if self.use_cache else sequences  # (N, T_step)
        positions = None if self.mask is None else position_ids_from_mask(self.mask, fed.shape[1])
        out = self.model(fed, attention_mask=self.mask, position_ids=positions, past_key_values=self.past,
                         use_cache=self.use_cache, logits_to_keep=1)
        self.past, self.seen = out.past_key_values, sequences.shape[1]
        if self.prompt_length is None:
            self.prompt_length = sequences.shape[1]
        if not torch.isfinite(out.logits[:, -1]).all():  # greedy would pick an arbitrary token silently
            raise ValueError(f"generate: the model's logits hold NaN or infinity at new token "
                             f"{sequences.shape[1] - self.prompt_length + 1}: its weights are not finite "
                             "(a diverged run?)")
        # Contiguous: the fast path's LM head returns a transposed view, and torch.multinomial's draws
        # depend on the memory layout of the probabilities, not only on their values.
        return out.logits[:, -1].float().contiguous()  # (N, V)


def logits_processors(s: Settings, prompt_start: torch.Tensor | None,
                      beams: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """process(sequences, scores) -> scores: the controls of `s`, in transformers' order (repetition
    penalty, no repeated n-gram, banned words, minimum length; then, when sampling, temperature,
    top-k, top-p). prompt_start (N,): where each row's prompt starts after its left padding."""
    # Beam sampling keeps one token more than there are end-of-sequence ids, so a beam can go on.
    keep = (len(s.eos_token_id) + 1 if s.eos_token_id else 2) if beams else 1

    def process(sequences: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if s.repetition_penalty != 1.0:
            scores = repetition_penalty(sequences, scores, s.repetition_penalty, prompt_start)
        if s.no_repeat_ngram_size > 0:
            scores = no_repeat_ngram(sequences, scores, s.no_repeat_ngram_size)
        if s.bad_words_ids is not None:
            scores = ban_words(sequences, scores, s.bad_words_ids, s.eos_token_id)
        if s.eos_token_id is not None and s.min_length > 0:
            scores = forbid_eos(sequences, scores, s.min_length, s.eos_token_id)
        if s.do_sample:
            if s.temperature != 1.0:
                scores = apply_temperature(scores, s.temperature)
            if s.top_k != 0:
                scores = top_k_filter(scores, s.top_k, keep)
            if s.top_p < 1.0:
                scores = top_p_filter(scores, s.top_p, keep)
        return scores

    return process


# ----------------------------------------------------------------------------------------------------
# Greedy decoding and sampling
# ----------------------------------------------------------------------------------------------------


def sample_loop(step: Callable, input_ids: torch.Tensor, s: Settings, process: Callable,
                is_done: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator | None,
                streamer: Any = None) -> tuple[torch.Tensor, tuple | None, tuple | None]:
    """Greedy decoding (the argmax) or sampling (one draw from the softmax of the processed scores),
    one token per row per step, until every row is done. A row that is done gets the pad id from
    then on when there are end-of-sequence ids (transformers' rule). Returns the sequences and, when
    asked for, the per-step processed scores and raw logits."""
    tokens = input_ids  # (N, T), grows by one column per step
    done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    scores = () if s.output_scores and s.return_dict_in_generate else None
    raw = () if s.output_logits and s.return_dict_in_generate else None
    while not done.all():
        logits = step(tokens)  # (N, V)
        processed = process(tokens, logits)
        if scores is not None:
            scores += (processed,)
        if raw is not None:
            raw += (logits,)
        if s.do_sample:
            chosen = torch.multinomial(softmax(processed, dim=-1), num_samples=1, generator=generator).squeeze(1)
        else:
            chosen = processed.argmax(dim=-1)  # (N,)
        if s.eos_token_id is not None:
            chosen = chosen.masked_fill(done, s.pad_token_id)  # finished rows only pad from here on
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)  # (N, T + 1)
        if streamer is not None:
            stream_put(streamer, chosen, prompt=False)
        done = done | is_done(tokens)
    return tokens, scores, raw


# ----------------------------------------------------------------------------------------------------
# The front door
# ----------------------------------------------------------------------------------------------------


def _check_args(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, s: Settings) -> None:
    """The tensors, and the length against the position table, before the first forward."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"generate: input_ids must be a non-empty (batch, prompt_len) tensor, got {shape}")
    n_positions = getattr(model.config, "n_positions", None)
    length = input_ids.shape[1]
    if n_positions is not None and s.max_length > n_positions:
        raise ValueError(f"generate: the prompt ({length} tokens) + max_new_tokens ({s.max_length - length}) "
                         f"= {s.max_length} exceeds the model's n_positions={n_positions}; "
                         "shorten the prompt or ask for fewer tokens")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"generate: attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                             f"{tuple(input_ids.shape)}: they must be equal")
        if not attention_mask[:, -1].bool().all():
            raise ValueError("generate: attention_mask has padding in the last column (right padding); new tokens "
                             "would follow the padding. Pad prompts on the left for generation "
                             "(tokenizer.padding_side = 'left')")


def generate(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool | None = None,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    *,
    generation_config: GenerationConfig | None = None,
    tokenizer: Any = None,
    streamer: Any = None,
    **options: Any,
) -> torch.Tensor | GenerateDecoderOnlyOutput | GenerateBeamDecoderOnlyOutput:
    """The prompt followed by the generated tokens: a LongTensor (N, T + new), as transformers' generate.

    input_ids (B, T), left-padded for a batch of different lengths with attention_mask (B, T) marking
    the padding with 0; each row's tokens then get the positions they would have unpadded, so a row
    continues as it would alone. Every other argument is a setting of minift/generation/config.py
    (max_length, min_new_tokens, num_beams, length_penalty, early_stopping, num_return_sequences,
    repetition_penalty, no_repeat_ngram_size, bad_words_ids, stop_strings, return_dict_in_generate,
    output_scores, ...), None meaning "not given": then `generation_config`'s, then transformers'
    defaults (20 new tokens, greedy, top_k=50 when sampling). This function reads no model config: no
    end-of-sequence id unless given (`model.generate` reads the model's generation config).

    A row ends at an eos_token_id (one id or several; [] for none, which overrides a default), a stop
    string (needs `tokenizer`), or
    max_length; afterwards it holds pad_token_id (the first eos id when None), and generation ends
    once every row has. N is B x num_return_sequences. `generator` seeds sampling; `streamer` gets
    each new token (minift/generation/streamer.py). use_cache=False recomputes the whole prefix at
    every step (same tokens, slower). The model's train/eval mode is left as is.
    """
    given = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature, "top_k": top_k,
             "top_p": top_p, "use_cache": use_cache, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
             **options}
    prompt_length = input_ids.shape[1] if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 else 0
    s = resolve(given, generation_config, prompt_length, getattr(model.config, "n_positions", None))
    _check_args(model, input_ids, attention_mask, s)
    if streamer is not None and s.num_beams > 1:
        raise ValueError("generate: a streamer follows one sequence as it grows; beam search changes its mind "
                         "until the end. Stream with num_beams=1 (as transformers requires)")
    input_ids = input_ids.long()
    if attention_mask is None and s.pad_token_id is not None and (
            s.eos_token_id is None or s.pad_token_id not in s.eos_token_id) and bool((input_ids == s.pad_token_id).any()):
        # transformers' rule: with a pad id that is not an eos id, its occurrences in the prompt are padding.
        attention_mask = (input_ids != s.pad_token_id).long()
    expand = max(s.num_beams, s.num_return_sequences)  # each prompt, repeated for its beams or samples
    input_ids = input_ids.repeat_interleave(expand, dim=0)
    if attention_mask is not None:
        # No padding anywhere: the mask says nothing, and without one the model skips building the
        # padding mask at every step (and the prompt can use the fused causal kernel); its default
        # positions, T_past, T_past + 1, ..., are then the ones the mask would give.
        attention_mask = None if bool(attention_mask.all()) else attention_mask.repeat_interleave(expand, dim=0)
    prompt_start = None if attention_mask is None else (attention_mask != 0).int().argmax(dim=1)
    process = logits_processors(s, prompt_start, beams=s.num_beams > 1)
    stops = None if s.stop_strings is None else StopStrings(s.stop_strings, tokenizer)

    def is_done(sequences: torch.Tensor) -> torch.Tensor:
        return finished(sequences, s.max_length, s.eos_token_id, stops)

    step = CausalLMStep(model, attention_mask, s.use_cache)
    with torch.no_grad():
        if s.num_beams > 1:
            # Written after hypotheses that ended early, as transformers does (`pad or eos[0]`: a pad
            # id of 0 gives way to the eos id; without eos ids, -1).
            fill = -1 if s.eos_token_id is None else (s.pad_token_id or s.eos_token_id[0])
            result = beam_search(step, input_ids, num_beams=s.num_beams, max_length=s.max_length, process=process,
                                 is_done=is_done, length_penalty=s.length_penalty, early_stopping=s.early_stopping,
                                 num_return_sequences=s.num_return_sequences,
                                 n_eos=len(s.eos_token_id or []), fill_value=fill, do_sample=s.do_sample,
                                 generator=generator, keep_scores=s.return_dict_in_generate and s.output_scores,
                                 keep_logits=s.return_dict_in_generate and s.output_logits)
            if not s.return_dict_in_generate:
                return result.sequences
            return GenerateBeamDecoderOnlyOutput(
                sequences=result.sequences, sequences_scores=result.sequences_scores if s.output_scores else None,
                scores=result.scores, logits=result.logits, beam_indices=result.beam_indices)
        if streamer is not None:
            stream_put(streamer, input_ids, prompt=True)
        tokens, scores, raw = sample_loop(step, input_ids, s, process, is_done, generator, streamer)
        if streamer is not None:
            stream_end(streamer)
    if not s.return_dict_in_generate:
        return tokens
    return GenerateDecoderOnlyOutput(sequences=tokens, scores=scores, logits=raw)
