"""Text generation with a causal language model: greedy decoding, temperature, top-k and top-p
(nucleus) sampling, and the KV cache that makes each new token cost one position, not the whole prefix.

Lesson: `lessons/16-generation.md` (the decoding rules, the cache and its memory/time arithmetic).

`generate` works with any model whose forward takes `(input_ids, attention_mask=, position_ids=,
past_key_values=, use_cache=, logits_to_keep=)` and returns `.logits` (B, T or logits_to_keep, vocab)
and `.past_key_values`, and whose config has `n_positions`: minift's GPT2LMHeadModel
(minift/models/gpt2.py), whose `.generate` calls it. For a left-padded batch it passes the positions
that skip the padding (`position_ids_from_mask`), as transformers' generate does; the model's forward,
like transformers', numbers positions 0, 1, ... whatever the mask (lesson 15).
`tests/test_generate.py` checks greedy decoding token for token against `transformers`' `generate`,
and the three sampling filters against its logits warpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from minift.nn.functional import softmax


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / T: softmax(z / T) is sharper than softmax(z) for T < 1 (T -> 0 is greedy) and
    flatter for T > 1 (T -> inf is uniform); the order of the tokens never changes."""
    return logits / temperature


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept), set the rest to -inf
    (Fan et al. 2018, sec. 5.4). logits (B, V) -> (B, V)."""
    top_k = min(top_k, logits.shape[-1])
    kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2019, sec. 3.1, eq. 2): keep the smallest set of most
    probable tokens whose probability adds up to at least top_p; set the rest to -inf.

    In descending order of probability a token is kept iff the tokens ranked above it hold less
    than top_p: the first token is always kept (nothing is above it), and the token that makes the
    sum reach top_p is the last one kept. logits (B, V) -> (B, V).
    """
    if top_p >= 1.0:  # the whole vocabulary is the nucleus
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V) each
    probs = softmax(sorted_logits, dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs  # (B, V): probability of the tokens ranked higher
    remove_sorted = mass_above >= top_p
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
    if top_k is not None:
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


def _check_args(model: Any, input_ids: torch.Tensor, max_new_tokens: int, temperature: float,
                top_k: int | None, top_p: float | None, attention_mask: torch.Tensor | None) -> None:
    """Every argument before the first forward, so a bad one fails in one clear sentence."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"generate: input_ids must be a non-empty (batch, prompt_len) tensor, got {shape}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"generate: max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"generate: temperature must be > 0, got {temperature!r} (for greedy decoding pass "
                         "do_sample=False)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"generate: top_k must be an integer >= 1 (or None), got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"generate: top_p must be in (0, 1] (or None), got {top_p!r}")
    n_positions = model.config.n_positions
    if input_ids.shape[1] + max_new_tokens > n_positions:
        raise ValueError(f"generate: the prompt ({input_ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) "
                         f"= {input_ids.shape[1] + max_new_tokens} exceeds the model's n_positions={n_positions}; "
                         "shorten the prompt or ask for fewer tokens")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"generate: attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                             f"{tuple(input_ids.shape)}: they must be equal")
        if not attention_mask[:, -1].bool().all():
            raise ValueError("generate: attention_mask has padding in the last column (right padding); new tokens "
                             "would follow the padding. Pad prompts on the left for generation")


def generate(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The prompt followed by up to `max_new_tokens` generated tokens: a LongTensor (B, T + new).

    input_ids (B, T), left-padded for a batch of different lengths with attention_mask (B, T) marking
    the padding with 0; each row's tokens then get the positions they would have unpadded
    (`position_ids_from_mask`), so a row continues as it would alone. A row stops when it produces an
    eos_token_id (one id or several); later positions of a finished row hold pad_token_id (the eos id
    when pad_token_id is None), and generation ends early once every row has finished, as in
    transformers. temperature, top_k and top_p apply only when do_sample; `generator` seeds the draws.
    use_cache=False recomputes the whole prefix at every step (same tokens, slower). The model's
    train/eval mode is left as is.
    """
    _check_args(model, input_ids, max_new_tokens, temperature, top_k, top_p, attention_mask)
    if attention_mask is not None and bool(attention_mask.all()):
        # No padding anywhere: the mask says nothing, and without one the model skips building the
        # padding mask at every step (and the prompt can use the fused causal kernel); its default
        # positions, T_past, T_past + 1, ..., are then the ones the mask would give.
        attention_mask = None
    eos = None if eos_token_id is None else torch.tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=input_ids.device)
    pad = pad_token_id if pad_token_id is not None else (None if eos is None else int(eos[0]))
    batch = input_ids.shape[0]
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    tokens = input_ids.long()  # (B, T), grows by one column per step
    step_input, past = tokens, None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            # With the cache, feed only what it has not seen: the prompt, then one token at a time;
            # without it, recompute every position of the prefix.
            fed = step_input if use_cache else tokens  # (B, T_step)
            # Left padding: pass the positions that skip it, as transformers' generate does.
            positions = None if attention_mask is None else position_ids_from_mask(attention_mask, fed.shape[1])
            out = model(fed, attention_mask=attention_mask, position_ids=positions, past_key_values=past,
                        use_cache=use_cache, logits_to_keep=1)
            past = out.past_key_values  # None without the cache
            if not torch.isfinite(out.logits[:, -1]).all():  # greedy would pick an arbitrary token silently
                step = tokens.shape[1] - input_ids.shape[1] + 1
                raise ValueError(f"generate: the model's logits hold NaN or infinity at new token {step}: its "
                                 "weights are not finite (a diverged run?)")
            chosen = next_token(out.logits[:, -1], do_sample, temperature, top_k, top_p, generator)  # (B,)
            if eos is not None:
                chosen = chosen.masked_fill(finished, pad)  # finished rows only pad from here on
                finished |= torch.isin(chosen, eos)
            tokens = torch.cat([tokens, chosen[:, None]], dim=1)  # (B, T + 1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
            step_input = chosen[:, None]  # (B, 1)
            if finished.all():
                break
    return tokens
