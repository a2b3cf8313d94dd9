"""Every option of generate besides beam search, against transformers: the repetition controls value
for value against its LogitsProcessors; greedy decoding with each option token for token (three
random GPT-2 configs, with and without the KV cache, one prompt and a left-padded batch, the fast
path); sampling with transformers' own draws under the same seed; the scores of
return_dict_in_generate; stop strings; defaults from generation_config.json; streaming; and the
errors and warnings for bad settings."""

import dataclasses
import itertools
import json
import subprocess
import sys
import warnings

import pytest
import torch
import transformers
from generation_support import CONFIGS, both, frequent_tokens, left_padded_batch, make_pairs, single_prompt
from transformers.generation.logits_process import (
    MinLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

from minift.generate import generate
from minift.generation.config import GenerationConfig, GenerationConfigError
from minift.generation.processors import ban_words, forbid_eos, no_repeat_ngram, repetition_penalty
from minift.generation.streamer import TextStreamer
from minift.tokenizer import GPT2Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("options"))


def prompts(pair):
    return [("single", single_prompt(pair.vocab), None), ("batch", *left_padded_batch(pair.vocab))]


# ----------------------------------------------------------------------------------------------------
# The processors, value for value
# ----------------------------------------------------------------------------------------------------


def random_case(seed: int, vocab: int = 30, rows: int = 4, length: int = 9):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 6, (rows, length), generator=gen)  # few distinct ids: many repeats
    scores = 3.0 * torch.randn(rows, vocab, generator=gen)
    return ids, scores


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, -inf where the other is -inf (both only copy, scale or mask the input)."""
    return torch.equal(a.isinf(), b.isinf()) and torch.equal(a[~a.isinf()], b[~b.isinf()])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_processors_match_transformers(seed):
    ids, scores = random_case(seed)
    start = torch.tensor([0, 2, 5, 8])  # where each row's prompt starts (left padding before)
    for penalty in (1.3, 0.7):
        assert same(repetition_penalty(ids, scores.clone(), penalty),
                    RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone()))
        assert same(repetition_penalty(ids, scores.clone(), penalty, start),
                    RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=start)(ids, scores.clone()))
    for n in (1, 2, 3, 12):
        assert same(no_repeat_ngram(ids, scores.clone(), n), NoRepeatNGramLogitsProcessor(n)(ids, scores.clone()))
    bad = [[3], [1, 2], [4, 4, 5], [7]]
    for eos in (None, [7], [3, 9]):
        want = NoBadWordsLogitsProcessor(bad, eos)(ids, scores.clone())
        assert same(ban_words(ids, scores.clone(), bad, eos), want)
    for length in (5, 9, 10):
        want = MinLengthLogitsProcessor(length, [4, 11])(ids, scores.clone())
        assert same(forbid_eos(ids, scores.clone(), length, [4, 11]), want)
    assert no_repeat_ngram(ids, scores, 2).isinf().any()  # the cases do ban something


# ----------------------------------------------------------------------------------------------------
# Greedy decoding with each option
# ----------------------------------------------------------------------------------------------------

CASES = {
    "repetition-penalty": {"repetition_penalty": 1.3},
    "repetition-reward": {"repetition_penalty": 0.7},
    "no-repeat-bigram": {"no_repeat_ngram_size": 2},
    "no-repeat-trigram-and-penalty": {"no_repeat_ngram_size": 3, "repetition_penalty": 1.2},
    "bad-words": {"bad": True},
    "min-new-tokens": {"min_new_tokens": 6, "eos": 1},
    "two-eos": {"eos": 2},
    "max-length": {"max_length": 14},
    "max-length-and-min-length": {"max_length": 16, "min_length": 12, "eos": 1},
}


def arguments(pair, case, ids, mask):
    kwargs = dict(CASES[case])
    n_eos = kwargs.pop("eos", 0)
    if n_eos:
        kwargs["eos_token_id"] = frequent_tokens(pair, ids, mask, n_eos)
    if kwargs.pop("bad", False):  # a token and a two-token sequence that greedy decoding writes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new = pair.ref.generate(ids, attention_mask=mask, max_new_tokens=4, pad_token_id=0)[0, ids.shape[1]:]
        kwargs["bad_words_ids"] = [[int(new[2])], [int(new[0]), int(new[1])], [1, 2, 3]]
    if "max_length" not in kwargs:
        kwargs["max_new_tokens"] = 10
    return {"pad_token_id": 0, **kwargs}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("config", CONFIGS)
def test_greedy_options_match_transformers(pairs, config, case):
    pair = pairs[config]
    for (name, ids, mask), use_cache in itertools.product(prompts(pair), (True, False)):
        kwargs = arguments(pair, case, ids, mask)
        want, got = both(pair, ids, mask, use_cache=use_cache, **kwargs)
        assert torch.equal(got, want), (name, use_cache)
        if use_cache:
            assert torch.equal(both(pair, ids, mask, impl="sdpa", **kwargs)[1], want), name


def test_the_options_change_the_tokens(pairs):
    """Each option acts: without it, greedy decoding gives other tokens (so the tests above compare
    the option, not plain greedy decoding twice)."""
    pair = pairs["a"]
    ids, mask = left_padded_batch(pair.vocab)
    plain = both(pair, ids, mask, max_new_tokens=10, pad_token_id=0)[1]
    for case in ("repetition-penalty", "repetition-reward", "no-repeat-bigram", "bad-words", "min-new-tokens"):
        got = both(pair, ids, mask, **arguments(pair, case, ids, mask))[1]
        assert not torch.equal(got, plain), case


@pytest.mark.parametrize("config", CONFIGS)
def test_greedy_scores_and_logits_match_transformers(pairs, config):
    pair = pairs[config]
    ids, mask = left_padded_batch(pair.vocab)
    want, got = both(pair, ids, mask, max_new_tokens=6, pad_token_id=0, repetition_penalty=1.4,
                     return_dict_in_generate=True, output_scores=True, output_logits=True)
    assert torch.equal(got.sequences, want.sequences) and torch.equal(got[0], want[0])
    for ours, theirs in zip(got.scores + got.logits, want.scores + want.logits, strict=True):
        assert (ours - theirs).abs().max() <= 1e-5 * max(1.0, theirs.abs().max().item())


# ----------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------

SAMPLING = {
    "defaults (top_k=50)": {},
    "no top-k": {"top_k": 0},
    "temperature, top-k, top-p": {"temperature": 0.7, "top_k": 5, "top_p": 0.9},
    "three per prompt": {"num_return_sequences": 3, "top_p": 0.8},
    "with the repetition controls": {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2},
}


@pytest.mark.parametrize("case", SAMPLING)
@pytest.mark.parametrize("config", CONFIGS)
def test_sampling_draws_transformers_tokens_from_the_same_seed(pairs, config, case):
    """Without a generator, sampling draws from torch's global generator as transformers does, from the
    same probabilities: after the same torch.manual_seed, the very same tokens."""
    pair = pairs[config]
    ids, mask = left_padded_batch(pair.vocab)
    kwargs = {"do_sample": True, "max_new_tokens": 10, "pad_token_id": 0, **SAMPLING[case]}
    for use_cache in (True, False):
        torch.manual_seed(5)
        want = pair.ref.generate(ids, attention_mask=mask, use_cache=use_cache, **kwargs)
        torch.manual_seed(5)
        got = pair.ours["eager"].generate(ids, attention_mask=mask, use_cache=use_cache, **kwargs)
        assert torch.equal(got, want), use_cache
        assert got.shape[0] == 3 * kwargs.get("num_return_sequences", 1)


def test_sampling_is_reproducible_from_a_generator(pairs):
    pair = pairs["b"]
    ids, mask = left_padded_batch(pair.vocab)

    def sample(seed, use_cache=True, impl="eager"):
        return pair.ours[impl].generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=10,
                                        num_return_sequences=2, use_cache=use_cache, top_k=0,
                                        generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(0), sample(0))
    assert torch.equal(sample(0), sample(0, use_cache=False))
    assert torch.equal(sample(0), sample(0, impl="sdpa"))
    assert not torch.equal(sample(0), sample(1))
    assert not torch.equal(sample(0)[0], sample(0)[1])  # the samples of one prompt differ


# ----------------------------------------------------------------------------------------------------
# Stop strings
# ----------------------------------------------------------------------------------------------------


def find_text(pair, accept, sample: bool, seeds=range(300)):
    """A prompt (and sampling seed) whose continuation contains a two-byte piece of text `accept`
    likes, and that text: stop strings must come from what the model actually writes."""
    for seed in seeds:
        ids = single_prompt(pair.vocab, seed=seed % 7)
        torch.manual_seed(seed)
        new = generate(pair.ours["eager"], ids, 16, do_sample=sample, top_k=0)[0, ids.shape[1]:].tolist()
        for i in range(1, len(new) - 1):
            try:
                text = bytes(new[i:i + 2]).decode("utf-8")
            except (UnicodeDecodeError, ValueError):  # not valid UTF-8, or the <|endoftext|> id
                continue
            if accept(text):
                return ids, seed, text
    raise AssertionError("no prompt found")


def stop_string_runs(pair, ids, seed, stop, **kwargs):
    """transformers' and minift's outputs with stop strings, from the same seed when sampling."""
    ours = GPT2Tokenizer.from_pretrained(pair.folder)
    theirs = transformers.AutoTokenizer.from_pretrained(pair.folder)
    stops = [stop, "\x00\x01"]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = pair.ref.generate(ids, max_new_tokens=16, stop_strings=stops, tokenizer=theirs, **kwargs)
    torch.manual_seed(seed)
    got = pair.ours["eager"].generate(ids, 16, stop_strings=stops, tokenizer=ours, **kwargs)
    return want, got, ours


def test_stop_strings_match_transformers(pairs):
    """Greedy decoding and beam search with a stop string the model writes (config c's tokens are
    single bytes, so a two-byte stop string always spans two tokens)."""
    pair = pairs["c"]
    ids, seed, stop = find_text(pair, str.isascii, sample=False)
    for kwargs in ({}, {"num_beams": 3}, {"num_beams": 2, "num_return_sequences": 2}):
        for use_cache in (True, False):
            want, got, tokenizer = stop_string_runs(pair, ids, seed, stop, use_cache=use_cache, **kwargs)
            assert torch.equal(got, want), (kwargs, use_cache)
    want, got, tokenizer = stop_string_runs(pair, ids, seed, stop)
    assert tokenizer.decode(got[0, ids.shape[1]:]).endswith(stop) and got.shape[1] < ids.shape[1] + 16
    # The prompt ending in the stop string: the first new token stops generation only if the match
    # overlaps it (transformers' rule; test_stop_rule_matches_stop_string_criteria checks the rule itself).
    ending_in_stop = torch.cat([ids, ids[:, -1:].new_tensor([tokenizer.encode(stop)])], dim=1)
    want, got, _ = stop_string_runs(pair, ending_in_stop, seed, stop)
    assert torch.equal(got, want)


def test_stop_rule_matches_stop_string_criteria(tmp_path):
    """The stop test against transformers' StopStringCriteria, on texts tokenized by a BPE with merges
    (the lesson fixture: tokens of several characters), ids decided one sequence at a time: a stop
    string ends the text overlapping its last token, inside one token, across tokens, or only earlier
    (no stop: the match must overlap the last token)."""
    from conftest import REPO
    from transformers.generation.stopping_criteria import StopStringCriteria

    from minift.generation.stopping import StopStrings

    ours = GPT2Tokenizer.from_pretrained(REPO / "lessons" / "fixtures" / "gpt2")
    ours.save_pretrained(tmp_path)  # with the tokenizer files transformers' AutoTokenizer reads
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    stops = ["stop", " the end", "é", "\n\n"]
    texts = ["please stop", "unstoppable", "stop it", "sto", "nonstop", "this is the end", "the end of it",
             "café", "cafés", "a\n\n", "a\n\nb", " the en", "stopstop", "the end the end"]
    mine, reference = StopStrings(stops, ours), StopStringCriteria(theirs, stops)
    for text in texts:
        ids = torch.tensor([ours.encode(text)])
        assert bool(mine(ids)[0]) == bool(reference(ids, None)[0]), text
    batch = torch.tensor([ours.encode(t) for t in ("stop", "pots")])
    assert mine(batch).tolist() == reference(batch, None).tolist()


def test_stop_strings_match_a_character_split_across_tokens(pairs):
    """A stop string of one two-byte character (U+0080..U+07FF): its bytes come as two tokens, and
    the sequence stops at the second. Sampled, from the same seed in both libraries."""
    pair = pairs["c"]
    ids, seed, stop = find_text(pair, lambda text: len(text) == 1, sample=True)
    for kwargs in ({"num_return_sequences": 2}, {}):
        want, got, tokenizer = stop_string_runs(pair, ids, seed, stop, do_sample=True, top_k=0, **kwargs)
        assert torch.equal(got, want), kwargs
    assert tokenizer.decode(got[0, ids.shape[1]:]).endswith(stop)  # the run find_text saw, stopped


def test_stop_strings_need_the_tokenizer(pairs):
    with pytest.raises(ValueError, match="stop_strings needs the model's tokenizer.*pass tokenizer="):
        pairs["c"].ours["eager"].generate(single_prompt(257), 4, stop_strings="ab")


# ----------------------------------------------------------------------------------------------------
# generation_config.json
# ----------------------------------------------------------------------------------------------------


def test_defaults_come_from_generation_config_json(pairs, tmp_path):
    """A checkpoint's generation_config.json sets the defaults of model.generate in both libraries;
    arguments still win; minift writes the file back in a form transformers reads."""
    pair = pairs["b"]
    settings = {"num_beams": 3, "max_new_tokens": 7, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2,
                "length_penalty": 0.5, "eos_token_id": frequent_tokens(pair, *left_padded_batch(pair.vocab)),
                "pad_token_id": 0}
    folder = tmp_path / "ckpt"
    pair.ref.save_pretrained(folder)
    transformers.GenerationConfig(**settings).save_pretrained(folder)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    ours = type(pair.ours["eager"]).from_pretrained(folder)
    ids, mask = left_padded_batch(pair.vocab)
    assert torch.equal(ours.generate(ids, attention_mask=mask), theirs.generate(ids, attention_mask=mask))
    assert torch.equal(ours.generate(ids, attention_mask=mask, num_beams=1),
                       theirs.generate(ids, attention_mask=mask, num_beams=1))
    ours.save_pretrained(tmp_path / "again")
    reread = transformers.GenerationConfig.from_pretrained(tmp_path / "again")
    assert {key: getattr(reread, key) for key in settings} == settings
    assert json.loads((tmp_path / "again" / "generation_config.json").read_text())["transformers_version"]
    assert torch.equal(transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "again").generate(
        ids, attention_mask=mask), theirs.generate(ids, attention_mask=mask))


def test_generation_config_argument_and_unsupported_entries(pairs, tmp_path):
    pair = pairs["a"]
    ids = single_prompt(pair.vocab)
    model = pair.ours["eager"]
    config = GenerationConfig(num_beams=2, max_new_tokens=4)
    assert torch.equal(model.generate(ids, generation_config=config), model.generate(ids, 4, num_beams=2))
    assert torch.equal(model.generate(ids, config), model.generate(ids, 4, num_beams=2))  # transformers' position
    folder = tmp_path / "typical"
    pair.ref.save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps({"typical_p": 0.5, "eos_token_id": 3}))
    loaded = type(model).from_pretrained(folder)
    with pytest.raises(GenerationConfigError, match=r"generation_config.json: typical_p=0.5 is not implemented.*"
                                                    r"extra.pop\('typical_p'\)"):
        loaded.generate(ids, 3)
    loaded.generation_config.extra.pop("typical_p")
    assert loaded.generate(ids, 3).shape == (1, ids.shape[1] + 3)


# ----------------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------------


def test_text_streamer_holds_back_incomplete_characters(pairs):
    """Byte tokens split "é" (C3 A9) and "☃" (E2 98 83): nothing is printed until a character is
    whole, no piece holds U+FFFD, and the pieces join into decode()'s text."""
    tokenizer = GPT2Tokenizer.from_pretrained(pairs["c"].folder)
    text = "héllo ☃ wörld 🙂!"
    ids = tokenizer.encode(text)
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte: the characters are split
    pieces = []
    streamer = TextStreamer(tokenizer, on_text=pieces.append)
    streamer.put(torch.tensor([ids[:2]]))  # the "prompt": "h" and the first byte of "é"
    assert pieces == ["h"]
    for i in ids[2:]:
        streamer.put(torch.tensor([i]))
    streamer.end()
    assert "".join(pieces) == text == tokenizer.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)
    assert "☃" in pieces and "🙂" in pieces  # each multi-byte character came out in one piece
    broken = []  # a character cut off at the end comes out as U+FFFD, as decode gives it
    streamer = TextStreamer(tokenizer, skip_prompt=True, on_text=broken.append)
    streamer.put(torch.tensor([[104]]))
    streamer.put(torch.tensor([0xE2]))
    streamer.put(torch.tensor([0x98]))
    streamer.end()
    assert "".join(broken) == tokenizer.decode([0xE2, 0x98]) == "\ufffd"


def test_generate_streams_every_new_token(pairs):
    pair = pairs["c"]
    tokenizer = GPT2Tokenizer.from_pretrained(pair.folder)
    ids = single_prompt(pair.vocab)
    seen, pieces = [], []
    out = pair.ours["eager"].generate(ids, 12, streamer=lambda new: seen.append(new.tolist()))
    assert [t for step in seen for t in step] == out[0, ids.shape[1]:].tolist()
    out = pair.ours["eager"].generate(ids, 12, streamer=TextStreamer(tokenizer, skip_prompt=True,
                                                                     on_text=pieces.append))
    assert "".join(pieces) == tokenizer.decode(out[0, ids.shape[1]:])
    with pytest.raises(ValueError, match="streamer follows one sequence.*num_beams=1"):
        pair.ours["eager"].generate(ids, 4, num_beams=2, streamer=lambda new: None)


def test_cli_streams_the_text(pairs):
    pair = pairs["c"]
    tokenizer = GPT2Tokenizer.from_pretrained(pair.folder)
    run = subprocess.run([sys.executable, "-m", "minift", "generate", "--model", str(pair.folder), "héllo ☃",
                          "--max-new-tokens", "10", "--stream", "--attn-impl", "eager"],
                         capture_output=True, text=True, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    prompt = tokenizer.encode("héllo ☃")
    want = pair.ours["eager"].generate(torch.tensor([prompt]), 10)
    assert result["text"] == tokenizer.decode(want[0]) and result["new_tokens"] == 10
    assert run.stderr.rstrip("\n").endswith(result["text"])  # the streamed text, whole
    beams = subprocess.run([sys.executable, "-m", "minift", "generate", "--model", str(pair.folder), "ab",
                            "--max-new-tokens", "4", "--num-beams", "3", "--num-return-sequences", "2",
                            "--early-stopping", "never"], capture_output=True, text=True, check=True)
    texts = json.loads(beams.stdout.strip().splitlines()[-1])["texts"]
    want = pair.ours["eager"].generate(torch.tensor([tokenizer.encode("ab")]), 4, num_beams=3,
                                       num_return_sequences=2, early_stopping="never")
    assert texts == tokenizer.batch_decode(want)


# ----------------------------------------------------------------------------------------------------
# Bad settings: one clear sentence each
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,message", [
    ({"max_length": 4}, (r"max_length=4 counts the prompt too \(as in transformers\), and the prompt already has "
                         r"5 tokens.*pass max_new_tokens=N")),
    ({"num_beams": 2, "num_return_sequences": 3}, (r"num_return_sequences=3 is more than num_beams=2.*raise "
                                                   r"num_beams to at least 3")),
    ({"num_return_sequences": 2}, r"num_return_sequences=2 with greedy decoding.*do_sample=True.*num_beams >= 2"),
    ({"repetition_penalty": -1.2}, r"repetition_penalty must be > 0 \(1.0 = no penalty"),
    ({"repetition_penalty": 0.0}, r"repetition_penalty must be > 0"),
    ({"no_repeat_ngram_size": -2}, r"no_repeat_ngram_size must be an integer >= 0, got -2"),
    ({"num_beams": 0}, r"num_beams must be an integer >= 1, got 0"),
    ({"early_stopping": "sometimes"}, r"early_stopping must be True, False or 'never', got 'sometimes'"),
    ({"bad_words_ids": [3, 4]}, r"bad_words_ids must be a non-empty list of non-empty lists of token ids"),
    ({"bad_words_ids": [[99]]}, r"bad_words_ids holds 99, outside the model's vocabulary of 41"),
    ({"eos_token_id": [3, -1]}, r"eos_token_id must be a token id \(an integer >= 0\) or a list of them, got \[3, -1\]"),
    ({"stop_strings": [""]}, r"stop_strings must be a non-empty string or a list of them"),
    ({"max_new_tokens": 3, "typo_option": 1}, r"typo_option"),
])
def test_bad_settings_raise_clear_errors(pairs, kwargs, message):
    model = pairs["a"].ours["eager"]
    kwargs = {"max_new_tokens": 3, **kwargs} if "max_length" not in kwargs else kwargs
    with pytest.raises((ValueError, TypeError), match=message):
        model.generate(torch.tensor([[1, 2, 3, 4, 5]]), **kwargs)


def test_an_empty_eos_list_turns_the_default_off(pairs):
    """eos_token_id=[]: no end-of-sequence id at all, where None means the model's default (its
    generation config's): every row runs to max_new_tokens, as the function without an eos id."""
    model = pairs["a"].ours["eager"]
    prompt = single_prompt(pairs["a"].vocab)
    eos = int(generate(model, prompt, 6)[0, prompt.shape[1] + 2])  # a token greedy decoding writes
    original = model.generation_config
    model.generation_config = dataclasses.replace(original, eos_token_id=eos)
    try:
        assert model.generate(prompt, 6).shape[1] < prompt.shape[1] + 6  # the default stops at it
        assert torch.equal(model.generate(prompt, 6, eos_token_id=[]), generate(model, prompt, 6))
    finally:
        model.generation_config = original


def test_what_minift_does_not_take_says_what_to_write(pairs):
    model = pairs["a"].ours["eager"]
    with pytest.raises(TypeError, match=r"\['logits_processor'\].*instead of logits_processor, use the settings"):
        model.generate(torch.tensor([[1, 2]]), 3, logits_processor=[])
    with pytest.raises(ValueError, match=r"right padding.*tokenizer.padding_side = 'left'"):
        model.generate(torch.tensor([[1, 2], [3, 0]]), 3, attention_mask=torch.tensor([[1, 1], [1, 0]]))


@pytest.mark.parametrize("kwargs,name", [({"top_p": 0.9}, "top_p"), ({"temperature": 0.5}, "temperature"),
                                         ({"top_k": 5}, "top_k"), ({"length_penalty": 2.0}, "length_penalty"),
                                         ({"early_stopping": True}, "early_stopping")])
def test_options_of_another_mode_warn_by_name(pairs, kwargs, name):
    """As transformers: an option the decoding mode ignores is named in a warning, and ignored."""
    model = pairs["a"].ours["eager"]
    ids = torch.tensor([[1, 2, 3]])
    with pytest.warns(UserWarning, match=rf"generate: {name}=.* is ignored: it only acts with"):
        got = model.generate(ids, 4, **kwargs)
    assert torch.equal(got, model.generate(ids, 4))


def test_default_length_is_transformers(pairs):
    """Neither max_new_tokens nor max_length: 20 new tokens, with a warning, as transformers."""
    pair = pairs["c"]
    ids = single_prompt(pair.vocab)
    with pytest.warns(UserWarning, match="neither max_new_tokens nor max_length was given: up to 20 new tokens"):
        got = pair.ours["eager"].generate(ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(got, pair.ref.generate(ids))
    assert got.shape[1] <= ids.shape[1] + 20
