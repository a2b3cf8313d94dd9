"""Beam search: keep the `num_beams` most probable sequences at every step instead of one
(Graves 2012, sec. 3.1; Sutskever et al. 2014, sec. 3.2; Wu et al. 2016, sec. 7 for the length penalty).

Lesson: lessons/32-decoding-strategies.md ("Beam search" and "Why beam search loops").

The search knows nothing about the model. It asks a *step function* for the next-token logits:

    step(sequences, reorder) -> logits (N, V)

sequences (N, L) are the beams so far (N = batch x num_beams); reorder (N,) says, for each row, which
row of the previous step it continues (None on the first step), so that the step function can reorder
whatever it keeps between steps -- a decoder's KV cache, an encoder-decoder's cache -- before running
the model on the new tokens. minift/generate.py's `CausalLMStep` is GPT-2's; an encoder-decoder
passes its own.

It is transformers' `_beam_search` (generation/utils.py, 5.x) step for step, so that its tokens are
transformers' token for token (tests/test_generate_beam.py), ties included: the same torch.topk
calls on tensors of the same shapes, the same -1e9 masks added to the same scores.

Each step, for every batch item:
1. score every continuation of every beam: beam score + log p(token | beam) (after the processors);
2. take the best 2 x num_beams of them (more with several end-of-sequence ids), so that num_beams
   remain after removing those that just finished;
3. the finished ones enter the item's list of num_beams finished hypotheses if their score, divided
   by (generated length) ** length_penalty, beats the worst one kept;
4. the best num_beams unfinished ones are the beams of the next step.
The search ends when every item is done (early_stopping: True = num_beams hypotheses finished;
False = no running beam can still beat the worst finished one, by a heuristic; "never" = by the
exact bound), when every candidate is finished, or at max_length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.functional import (  # torch's: transformers' very numbers, so ties break alike
    log_softmax,
    softmax,
)

Step = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]
NEG = -1.0e9  # "impossible", as transformers writes it (not -inf: scores stay finite and comparable)


@dataclass
class BeamResult:
    sequences: torch.Tensor  # (B x num_return_sequences, T + generated): the best hypotheses, best first
    sequences_scores: torch.Tensor  # (B x num_return_sequences,): their length-penalised scores
    beam_indices: torch.Tensor  # (B x num_return_sequences, generated): the beam row each token came from
    scores: tuple[torch.Tensor, ...] | None  # per step, the processed log-probabilities (B x num_beams, V)
    logits: tuple[torch.Tensor, ...] | None  # per step, the raw logits


def gather_beams(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """tensor (B, K, ...) -> (B, K', ...): the beams `indices` (B, K') of each batch item."""
    while indices.dim() < tensor.dim():
        indices = indices.unsqueeze(-1)
    return torch.take_along_dim(tensor, indices, dim=1)


def beam_search(step: Step, input_ids: torch.Tensor, *, num_beams: int, max_length: int,
                process: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                is_done: Callable[[torch.Tensor], torch.Tensor], length_penalty: float,
                early_stopping: bool | str, num_return_sequences: int, n_eos: int, fill_value: int,
                do_sample: bool = False, generator: torch.Generator | None = None,
                keep_scores: bool = False, keep_logits: bool = False) -> BeamResult:
    """Beam search from input_ids (B x num_beams, T), each prompt repeated num_beams times in a row.

    process(sequences, log_probs) -> log_probs: the logits processors; is_done(sequences) -> (N,):
    the stopping criteria (max_length, end-of-sequence ids, stop strings); n_eos: how many
    end-of-sequence ids there are; fill_value: the id written after a hypothesis that ended early.
    do_sample draws the candidates of step 2 from the softmax of the scores instead (beam sampling).
    """
    rows, prompt_length = input_ids.shape
    batch, device = rows // num_beams, input_ids.device
    keep = max(2, 1 + n_eos) * num_beams  # candidates per item: enough that num_beams do not finish
    top_num_beams = torch.arange(keep, device=device) < num_beams  # the first num_beams of the candidates

    # Running beams and finished hypotheses, (B, K, max_length), filled to the end with fill_value.
    running = torch.full((batch, num_beams, max_length), fill_value, dtype=torch.long, device=device)
    running[:, :, :prompt_length] = input_ids.view(batch, num_beams, prompt_length)
    finished = running.clone()
    # Only beam 0 may start: the K copies of the prompt would otherwise all pick the same tokens.
    running_scores = torch.zeros(batch, num_beams, device=device)
    running_scores[:, 1:] = NEG
    finished_scores = torch.full((batch, num_beams), NEG, device=device)
    is_finished = torch.zeros(batch, num_beams, dtype=torch.bool, device=device)
    improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)  # can a running beam still win?
    running_origin = torch.full((batch, num_beams, max_length - prompt_length), -1, dtype=torch.int32, device=device)
    finished_origin = running_origin.clone()
    all_scores = () if keep_scores else None
    all_logits = () if keep_logits else None

    length, reorder, done = prompt_length, None, False
    while not done:
        flat = running[:, :, :length].reshape(batch * num_beams, length)
        logits = step(flat, reorder).float()  # (B K, V)
        log_probs = process(flat, log_softmax(logits, dim=-1))
        if keep_scores:
            all_scores += (log_probs.clone(),)
        if keep_logits:
            all_logits += (logits.clone(),)
        vocab = log_probs.shape[-1]
        # 1. every continuation of every beam, scored: (B, K V)
        totals = (log_probs.view(batch, num_beams, vocab) + running_scores[:, :, None]).reshape(batch, -1)
        # 2. the best `keep` of them (or `keep` drawn from their softmax, without replacement)
        if do_sample:
            picked = torch.multinomial(softmax(totals, dim=-1), num_samples=keep, generator=generator)
            cand_scores, order = torch.gather(totals, 1, picked).sort(dim=-1, descending=True)
            picked = picked.gather(-1, order)
        else:
            cand_scores, picked = torch.topk(totals, k=keep)
        from_beam = picked // vocab  # (B, keep): the beam each candidate extends
        cand_origin = gather_beams(running_origin, from_beam)
        candidates = gather_beams(running, from_beam)
        candidates[:, :, length] = picked % vocab
        offset = torch.arange(batch, device=device).view(-1, 1) * num_beams
        cand_origin[:, :, length - prompt_length] = (from_beam + offset).to(cand_origin.dtype)  # a row of flat

        stops = is_done(candidates[:, :, :length + 1].reshape(batch * keep, -1)).view(batch, keep)
        # 4. the next running beams: the best num_beams candidates that did not just finish
        cand_running_scores = cand_scores + stops.to(torch.float32) * NEG
        best = torch.topk(cand_running_scores, k=num_beams)[1]
        running, running_scores = gather_beams(candidates, best), gather_beams(cand_running_scores, best)
        running_origin = gather_beams(cand_origin, best)
        # 3. the candidates that finished, among the first num_beams, join the finished hypotheses
        just_finished = stops & top_num_beams[None, :]
        penalised = cand_scores / ((length + 1 - prompt_length) ** length_penalty)
        item_full = torch.all(is_finished, dim=-1, keepdim=True) & (early_stopping is True)
        penalised += item_full.to(torch.float32) * NEG
        penalised += (~improvable).to(torch.float32) * NEG
        penalised += (~just_finished) * NEG
        merged_scores = torch.cat((finished_scores, penalised), dim=1)
        kept = torch.topk(merged_scores, k=num_beams)[1]
        finished = gather_beams(torch.cat((finished, candidates), dim=1), kept)
        finished_scores = gather_beams(merged_scores, kept)
        finished_origin = gather_beams(torch.cat((finished_origin, cand_origin), dim=1), kept)
        is_finished = gather_beams(torch.cat((is_finished, just_finished), dim=1), kept)

        reorder = running_origin[..., length - prompt_length].reshape(-1).long()  # for the cache
        length += 1
        improvable = _improvable(improvable, running_scores, finished_scores, is_finished, length, max_length,
                                 prompt_length, early_stopping, length_penalty)
        all_items_full = torch.all(is_finished) & (early_stopping is True)
        done = not bool(torch.any(improvable) & ~all_items_full & ~torch.all(stops))

    # The best num_return_sequences hypotheses of each item, cut to the longest of them.
    sequences = finished[:, :num_return_sequences].reshape(batch * num_return_sequences, -1)
    scores = finished_scores[:, :num_return_sequences].reshape(-1)
    origin = finished_origin[:, :num_return_sequences].reshape(batch * num_return_sequences, -1)
    generated = int((origin + 1).bool().sum(dim=1).max())
    return BeamResult(sequences[:, :prompt_length + generated], scores, origin[:, :generated], all_scores, all_logits)


def _improvable(improvable: torch.Tensor, running_scores: torch.Tensor, finished_scores: torch.Tensor,
                is_finished: torch.Tensor, length: int, max_length: int, prompt_length: int,
                early_stopping: bool | str, length_penalty: float) -> torch.Tensor:
    """(B, 1): can the best running beam still beat the worst finished hypothesis? Once no, an item
    stays done. The bound divides the best running score by a length: the current one (a heuristic:
    scores only fall as tokens are added, but the length penalty may raise them), or, with
    early_stopping="never" and a positive length_penalty, max_length (the exact bound)."""
    if early_stopping == "never" and length_penalty > 0.0:
        best_length = max_length - prompt_length
    else:
        best_length = length - prompt_length
    best_running = running_scores[:, :1] / (best_length ** length_penalty)
    worst_finished = torch.where(is_finished, torch.min(finished_scores, dim=1, keepdim=True)[0], NEG)
    return improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
