"""The measured instruction tuning and Least-to-Most (lessons 37 and 38): the data we write
(minift/data/synthetic.py), the vocabulary learned on it, the fresh checkpoint the runs start from,
and the exact match of greedily generated answers (minift/generation/answers.py) against
transformers' generate. The runs themselves are benchmarks/sft_synthetic.py and least_to_most.py;
the lessons run seconds-long versions."""

import json

import pytest
import tokenizers
import torch
import transformers

from minift.data.sft import TEMPLATES, generation_prompt, read_sft_records, render_chat
from minift.data.synthetic import (
    INSTRUCTIONS,
    LAST_LETTER_INSTRUCTION,
    LAST_LETTER_LONG,
    WORDS,
    decomposition,
    final_answer,
    instruction_record,
    instruction_split,
    last_letter_record,
    last_letter_split,
    task_of,
    write_jsonl,
)
from minift.generation.answers import exact_match, generate_answers
from minift.models.gpt2 import GPT2LMHeadModel
from minift.tokenizer import load_tokenizer
from minift.train.sft_experiment import experiment_tokenizer
from minift.train.tasks.pretraining import fresh_checkpoint

transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    experiment_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    return fresh_checkpoint(tmp_path_factory.mktemp("fresh"), load_tokenizer(tokenizer_dir), size="nano", seed=3)


# ---- the data -----------------------------------------------------------------------------------------


def test_instruction_outputs_by_hand():
    words = ("pear", "apple", "sun")
    assert instruction_record("reverse", words)["output"] == "sun apple pear"
    assert instruction_record("sort", words)["output"] == "apple pear sun"
    assert instruction_record("count", words)["output"] == "3"
    assert instruction_record("list", words) == {"instruction": INSTRUCTIONS["list"][0], "input": "pear apple sun",
                                                 "output": "pear, apple, sun"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_instruction_split_holds_out_inputs_and_one_combination(seed):
    train, test = instruction_split(seed, 2000, 96, held_out=("sort", 4))
    assert (train, test) == instruction_split(seed, 2000, 96, held_out=("sort", 4))  # deterministic by seed
    assert not {r["input"] for r in train} & {r["input"] for r in test}
    combos = {(task_of(r), len(r["input"].split())) for r in train}
    assert ("sort", 4) not in combos and len(combos) == 4 * 3 - 1
    assert sum((task_of(r), len(r["input"].split())) == ("sort", 4) for r in test) == 96 // 12
    assert all(w in WORDS for r in train + test for w in r["input"].split())


def test_instruction_split_bad_held_out():
    with pytest.raises(ValueError, match="held_out"):
        instruction_split(0, 10, 10, held_out=("sort", 9))


def test_decomposition_by_hand():
    # Zhou et al. (2023), table 3's example, in our format: each line the previous answer + one letter.
    assert decomposition(["think", "machine", "learning"]) == "think: k\nmachine: k e\nlearning: k e g"
    record = last_letter_record(["think", "machine", "learning"], "decompose")
    assert record["input"] == "think,machine,learning" and final_answer(record["output"]) == "k e g"
    assert final_answer(last_letter_record(["think", "machine"], "direct")["output"]) == "k e"
    with pytest.raises(ValueError, match="style"):
        last_letter_record(["a"], "cot")


def test_last_letter_split_lengths_and_styles():
    direct = last_letter_split(4, 500, 10, train_lengths=(1, 2), test_lengths=(3, 5), style="direct")
    decomposed = last_letter_split(4, 500, 10, train_lengths=(1, 2), test_lengths=(3, 5), style="decompose")
    (train_a, test_a), (train_b, test_b) = direct, decomposed
    assert [r["input"] for r in train_a + test_a] == [r["input"] for r in train_b + test_b]  # same words
    assert {len(r["input"].split(",")) for r in train_a} == {1, 2}
    assert [len(r["input"].split(",")) for r in test_a] == [3] * 10 + [5] * 10
    assert not {r["input"] for r in train_a} & {r["input"] for r in test_a}
    assert len({r["input"] for r in test_a}) == len(test_a)
    assert {r["instruction"] for r in test_a} == {LAST_LETTER_INSTRUCTION}
    assert {r["instruction"] for r in train_a} == {LAST_LETTER_INSTRUCTION, LAST_LETTER_LONG}
    for a, b in zip(train_a + test_a, train_b + test_b, strict=True):
        expected = " ".join(w[-1] for w in a["input"].split(","))
        assert final_answer(a["output"]) == final_answer(b["output"]) == expected


def test_records_are_read_by_the_sft_reader(tmp_path):
    train, _ = instruction_split(0, 5, 1)
    records = read_sft_records(write_jsonl(train, tmp_path / "train.jsonl"))
    assert [r["messages"][1]["content"] for r in records] == [r["output"] for r in train]
    assert all(json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines())


# ---- the vocabulary and the fresh model -------------------------------------------------------------------


def test_tiny_bpe_encodes_as_the_trainer_that_learned_it(tokenizer_dir):
    ours = load_tokenizer(tokenizer_dir)
    reference = tokenizers.ByteLevelBPETokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"))
    train, _ = instruction_split(1, 20, 1)
    letters, _ = last_letter_split(1, 20, 1, style="decompose")
    for record in train + letters:
        text = render_chat(read_sft_records_of(record), TEMPLATES["chat"], eos_token="")
        assert ours.encode(text) == reference.encode(text).ids, text
        assert ours.decode(ours.encode(text)) == text
    assert all(len(ours.encode(w)) == 1 for w in WORDS)  # each word of the instructions' inputs: one token


def test_letters_are_one_token_each(tmp_path):
    tokenizer = experiment_tokenizer(tmp_path, letters=True)
    answer = final_answer(decomposition(WORDS))
    assert len(tokenizer.encode(" " + answer)) == len(WORDS)


def read_sft_records_of(record):
    return [{"role": "user", "content": record["instruction"], "input": record["input"]},
            {"role": "assistant", "content": record["output"]}]


def test_fresh_checkpoint_loads_in_transformers(checkpoint):
    ours = GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    reference = transformers.GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids).logits - reference(ids).logits).abs().max().item() <= 1e-5
    assert ours.config.n_layer == 2 and ours.config.n_embd == 64


# ---- answers and exact match --------------------------------------------------------------------------------


def test_generation_prompt_is_the_text_before_the_reply(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    record = {"messages": read_sft_records_of(instruction_record("sort", ("sun", "egg")))}
    eos = "<|endoftext|>"
    whole = render_chat(record["messages"], TEMPLATES["chat"], eos_token=eos)
    prompt = generation_prompt(record, tokenizer, TEMPLATES["chat"])
    assert whole == prompt + "egg sun" + eos


@pytest.fixture(scope="module")
def prompts_and_reference(checkpoint, tokenizer_dir):
    """Seven prompts of different lengths and transformers' greedy continuation of each alone, cut at the
    first end-of-text token."""
    tokenizer = load_tokenizer(tokenizer_dir)
    reference = transformers.GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    _, test = instruction_split(5, 0, 7)
    prompts = [generation_prompt({"messages": read_sft_records_of(r)}, tokenizer, TEMPLATES["chat"]) for r in test]
    eos, expected = tokenizer.eos_token_id, []
    for prompt in prompts:
        ids = torch.tensor([tokenizer.encode(prompt)])
        new = reference.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=eos,
                                 pad_token_id=eos)[0, ids.shape[1]:].tolist()
        expected.append(tokenizer.decode(new[: new.index(eos)] if eos in new else new))
    return prompts, expected


@pytest.mark.parametrize("batch_size", [3, 64])
def test_answers_are_transformers_greedy_generate(checkpoint, tokenizer_dir, prompts_and_reference, batch_size):
    """Left-padded batches of prompts of different lengths (three batches, or one) give, row by row, what
    transformers' greedy generate gives for the prompt alone."""
    prompts, expected = prompts_and_reference
    model = GPT2LMHeadModel.from_pretrained(checkpoint)
    answers = generate_answers(model, load_tokenizer(tokenizer_dir), prompts, max_new_tokens=12, batch_size=batch_size)
    assert answers == expected
    assert len({len(p) for p in prompts}) > 1  # the batches do hold prompts of different lengths


def test_exact_match():
    assert exact_match(["a ", "b", "c"], ["a", "b", "d"]) == pytest.approx(2 / 3)
    assert exact_match(["x: ab"], ["y: ab"], normalize=final_answer) == 1.0
    with pytest.raises(ValueError, match="2 predictions for 1"):
        exact_match(["a", "b"], ["a"])
