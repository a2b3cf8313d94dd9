"""Beam search (minift/generation/beam.py) against transformers' generate, token for token: three
random GPT-2 configs, with and without the KV cache, one prompt and a left-padded batch, the fast
path too, and every beam option (num_return_sequences, length_penalty, early_stopping True / False /
"never", one or several end-of-sequence ids chosen so that hypotheses end at different steps,
max_length, the repetition controls, min_new_tokens); the scores and beam indices of
return_dict_in_generate; beam sampling; and the search alone, on a step function that is not a model."""

import itertools
import math

import pytest
import torch
from generation_support import CONFIGS, both, frequent_tokens, left_padded_batch, make_pairs, single_prompt

from minift.generation.beam import beam_search

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("beam"))


def prompts(pair):
    """(name, input_ids, attention_mask): one prompt, and a batch of three left-padded ones."""
    return [("single", single_prompt(pair.vocab), None), ("batch", *left_padded_batch(pair.vocab))]


# Each case: generate's arguments; "eos": 1 or 2 means that many end-of-sequence ids taken from the
# tokens the search produces early (frequent_tokens), so that hypotheses finish at different steps.
CASES = {
    "plain": {"num_beams": 3},
    "return-3-of-4": {"num_beams": 4, "num_return_sequences": 3},
    "eos": {"num_beams": 3, "eos": 1},
    "two-eos": {"num_beams": 3, "eos": 2, "num_return_sequences": 2},
    "length-penalty-2": {"num_beams": 3, "length_penalty": 2.0, "eos": 1},
    "length-penalty-negative": {"num_beams": 3, "length_penalty": -1.0, "eos": 1},
    "early-stopping-true": {"num_beams": 3, "early_stopping": True, "eos": 2},
    "early-stopping-never": {"num_beams": 3, "early_stopping": "never", "eos": 2},
    "never-no-length-penalty": {"num_beams": 4, "early_stopping": "never", "length_penalty": 0.0, "eos": 1},
    "max-length": {"num_beams": 2, "max_length": 13},
    "repetition-controls": {"num_beams": 3, "repetition_penalty": 1.8, "no_repeat_ngram_size": 2},
    "min-new-tokens-and-bad-words": {"num_beams": 3, "min_new_tokens": 4, "bad_words_ids": [[2], [3, 4]], "eos": 1},
}


def arguments(pair, case, ids, mask):
    kwargs = dict(CASES[case])
    n_eos = kwargs.pop("eos", 0)
    if n_eos:
        kwargs["eos_token_id"] = frequent_tokens(pair, ids, mask, n_eos, num_beams=kwargs["num_beams"])
    if "max_length" not in kwargs:
        kwargs["max_new_tokens"] = 9
    return {"pad_token_id": 0, **kwargs}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("config", CONFIGS)
def test_beam_search_matches_transformers(pairs, config, case):
    pair = pairs[config]
    for (name, ids, mask), use_cache in itertools.product(prompts(pair), (True, False)):
        kwargs = arguments(pair, case, ids, mask)
        want, got = both(pair, ids, mask, use_cache=use_cache, **kwargs)
        assert got.dtype == torch.long and got.shape == want.shape, (name, use_cache)
        assert torch.equal(got, want), (name, use_cache)
        if use_cache:  # the fast path's decoding products give the same tokens
            assert torch.equal(both(pair, ids, mask, impl="sdpa", **kwargs)[1], want), name


def test_the_cases_end_hypotheses_early(pairs):
    """The eos cases are only a test of the finishing rules if some hypotheses end before the others:
    then the outputs hold the fill id after their end, which must also match (the test above)."""
    for config in CONFIGS:
        pair = pairs[config]
        ids, mask = left_padded_batch(pair.vocab)
        kwargs = arguments(pair, "early-stopping-never", ids, mask)
        _, got = both(pair, ids, mask, **kwargs)
        new = got[:, ids.shape[1]:]
        ended = [int((row == eos).nonzero()[0]) for row in new for eos in kwargs["eos_token_id"] if (row == eos).any()]
        assert ended and min(ended) < new.shape[1] - 1, (config, ended, new.shape)  # fill ids after an end


@pytest.mark.parametrize("config", CONFIGS)
def test_scores_and_beam_indices_match_transformers(pairs, config):
    """return_dict_in_generate: the best hypotheses' length-penalised scores, every step's processed
    log-probabilities (float32: 1e-5 relative to their size, which reaches ~30) and the beam each
    token came from."""
    pair = pairs[config]
    ids, mask = left_padded_batch(pair.vocab)
    for use_cache in (True, False):
        kwargs = arguments(pair, "two-eos", ids, mask)
        want, got = both(pair, ids, mask, use_cache=use_cache, return_dict_in_generate=True, output_scores=True,
                         output_logits=True, length_penalty=1.5, **kwargs)
        assert torch.equal(got.sequences, want.sequences)
        assert torch.equal(got.beam_indices.long(), want.beam_indices.long())
        assert (got.sequences_scores - want.sequences_scores).abs().max() <= 1e-5 * want.sequences_scores.abs().max()
        assert len(got.scores) == len(want.scores) and len(got.logits) == len(want.logits)
        for ours, theirs in zip(got.scores + got.logits, want.scores + want.logits, strict=True):
            finite = theirs > -1e8  # -inf (banned) in both, or finite and close
            assert torch.equal(ours > -1e8, finite)
            assert (ours[finite] - theirs[finite]).abs().max() <= 1e-5 * max(1.0, theirs[finite].abs().max().item())
        assert got["sequences"] is got[0] is got.sequences  # indexable as transformers' outputs


@pytest.mark.parametrize("config", CONFIGS)
def test_beam_sampling(pairs, config):
    """num_beams > 1 with do_sample: with the same global seed, transformers' draws; with a generator,
    the same tokens on every run, with or without the cache."""
    pair = pairs[config]
    ids, mask = left_padded_batch(pair.vocab)
    kwargs = {"num_beams": 3, "num_return_sequences": 2, "do_sample": True, "top_k": 10, "max_new_tokens": 8,
              "pad_token_id": 0}
    torch.manual_seed(11)
    want = pair.ref.generate(ids, attention_mask=mask, **kwargs)
    torch.manual_seed(11)
    assert torch.equal(pair.ours["eager"].generate(ids, attention_mask=mask, **kwargs), want)

    def seeded(seed, use_cache=True):
        return pair.ours["eager"].generate(ids, attention_mask=mask, generator=torch.Generator().manual_seed(seed),
                                           use_cache=use_cache, **kwargs)

    assert torch.equal(seeded(1), seeded(1))
    assert torch.equal(seeded(1), seeded(1, use_cache=False))
    assert not torch.equal(seeded(1), seeded(2))


# ----------------------------------------------------------------------------------------------------
# The search alone: any step function
# ----------------------------------------------------------------------------------------------------


class BigramStep:
    """A step function that is not a model: the next token's logits depend on the last token only
    (a fixed table). It keeps a per-row "cache" -- the tokens it has seen -- and reorders it as the
    search says, as a decoder's KV cache must be; `check` compares it with the sequences fed."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table, self.cache = table, None

    def __call__(self, sequences: torch.Tensor, reorder: torch.Tensor | None) -> torch.Tensor:
        if self.cache is None:
            self.cache = sequences.clone()
        else:
            assert reorder is not None and reorder.shape == (sequences.shape[0],)
            self.cache = torch.cat([self.cache[reorder], sequences[:, -1:]], dim=1)
        assert torch.equal(self.cache, sequences)  # the reordered cache is what each row continues
        return self.table[sequences[:, -1]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exhaustive_beam_search_finds_the_most_probable_sequence(seed):
    """With as many beams as there are sequences, early_stopping="never" and length_penalty=0 (the
    canonical beam search, transformers' docstring says), the best hypothesis is the most probable
    sequence of the length, found by brute force; its score is its log-probability."""
    vocab, steps = 4, 3
    table = 2.0 * torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed))
    log_p = torch.log_softmax(table, dim=-1)
    beams = vocab ** steps
    prompt = torch.zeros(beams, 1, dtype=torch.long)  # one prompt, [0], repeated for the beams
    result = beam_search(BigramStep(table), prompt, num_beams=beams, max_length=1 + steps,
                         process=lambda seqs, scores: scores,
                         is_done=lambda seqs: torch.full((seqs.shape[0],), seqs.shape[1] >= 1 + steps),
                         length_penalty=0.0, early_stopping="never", num_return_sequences=beams, n_eos=0,
                         fill_value=-1)

    def log_prob(tokens):
        return sum(log_p[a, b].item() for a, b in zip((0, *tokens), tokens))

    every = sorted(itertools.product(range(vocab), repeat=steps), key=log_prob, reverse=True)
    assert result.sequences[0, 1:].tolist() == list(every[0])
    assert math.isclose(result.sequences_scores[0].item(), log_prob(every[0]), abs_tol=1e-5)
    got = {tuple(row[1:].tolist()) for row in result.sequences}
    assert got == set(every)  # every sequence, once
    assert (result.sequences_scores[:-1] >= result.sequences_scores[1:]).all()  # best first
