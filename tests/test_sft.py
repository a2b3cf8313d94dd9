"""Instruction tuning (minift/data/sft.py, the packed attention of minift/models/gpt2.py): templates against
transformers' apply_chat_template, the loss mask against a hand-computed example, packing against no packing
and against transformers' packed-sequence masking, and the bad-input errors naming file and line."""

import json
import warnings

import pytest
import torch
import transformers
from conftest import shared_data_or_skip
from tests_support import max_diff, write_byte_bpe

from minift.data.readers import DataError
from minift.data.sft import (
    ALPACA_TEMPLATE,
    DEFAULT_CHAT_TEMPLATE,
    build_example,
    pack_examples,
    read_sft_records,
    render_chat,
    sft_collate,
    template_variables,
)
from minift.losses import IGNORE_INDEX
from minift.models.gpt2 import GPT2LMHeadModel
from minift.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py

EOS = 256  # write_byte_bpe: one token per byte, then <|endoftext|>

CONVERSATIONS = [
    [{"role": "user", "content": "Reverse: cat dog"}, {"role": "assistant", "content": "dog cat"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": " Hello there!"}, {"role": "user", "content": "Sort: b a"},
     {"role": "assistant", "content": "a b"}],
    [{"role": "user", "content": "Name the colour", "input": "the sky"}, {"role": "assistant", "content": "blue"}],
    [{"role": "user", "content": "Count the words:\n\n one two  three"}, {"role": "assistant", "content": "\n3"}],
]


@pytest.fixture(scope="module")
def byte_tokenizer(tmp_path_factory):
    return load_tokenizer(write_byte_bpe(tmp_path_factory.mktemp("bytes")))


@pytest.fixture(scope="module")
def gpt2_tokenizers(tmp_path_factory):
    """minift's GPT-2 tokenizer on the real vocabulary, and transformers' reading the folder minift saves."""
    ours = load_tokenizer(shared_data_or_skip("gpt2/vocab.json", "gpt2/merges.txt") / "gpt2")
    folder = tmp_path_factory.mktemp("gpt2-tokenizer")
    ours.save_pretrained(folder)
    return ours, transformers.AutoTokenizer.from_pretrained(folder)


def _ids(encoded):
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


@pytest.mark.parametrize("template", [DEFAULT_CHAT_TEMPLATE, ALPACA_TEMPLATE], ids=["chat", "alpaca"])
def test_templates_render_and_encode_as_transformers(gpt2_tokenizers, template):
    """Same text and same ids as transformers' apply_chat_template, whole conversations and prompts for
    generation, with and without a system message, on GPT-2's real vocabulary."""
    ours, ref = gpt2_tokenizers
    for conversation in CONVERSATIONS:
        for messages, generation in ((conversation, False), (conversation[:-1], True)):
            text = render_chat(messages, template, add_generation_prompt=generation, **template_variables(ours))
            assert text == ref.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                   add_generation_prompt=generation)
            assert ours.encode(text, add_special_tokens=False) == _ids(ref.apply_chat_template(
                messages, chat_template=template, tokenize=True, add_generation_prompt=generation))


def test_example_ids_are_the_whole_text_encoded(gpt2_tokenizers):
    """build_example encodes piece by piece (to know which tokens are the reply); the ids are still those
    of the whole conversation encoded at once by transformers."""
    ours, ref = gpt2_tokenizers
    for template in (DEFAULT_CHAT_TEMPLATE, ALPACA_TEMPLATE):
        for conversation in CONVERSATIONS:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                example = build_example({"messages": conversation}, ours, template=template)
            assert example["input_ids"] == _ids(ref.apply_chat_template(conversation, chat_template=template,
                                                                        tokenize=True))


def test_loss_mask_by_hand(byte_tokenizer):
    """One byte per token: the labels are -100 on the prompt, the reply's bytes and the end-of-text id after it."""
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    example = build_example(record, byte_tokenizer)
    prompt = [*b"<|user|>\nHi", EOS, *b"\n<|assistant|>\n"]
    assert example["input_ids"] == prompt + [*b"Yo", EOS]
    assert example["labels"] == [IGNORE_INDEX] * len(prompt) + [ord("Y"), ord("o"), EOS]
    full = build_example(record, byte_tokenizer, train_on_prompt=True)
    assert full["labels"] == full["input_ids"]


def test_alpaca_mask_by_hand(byte_tokenizer, tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"instruction": "Add", "input": "1 2", "output": "3"}) + "\n"
                    + json.dumps({"instruction": "Say hi", "input": "", "output": "hi"}) + "\n", encoding="utf-8")
    with_input, without = read_sft_records(path)
    example = build_example(with_input, byte_tokenizer, template=ALPACA_TEMPLATE)
    prompt = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd\n\n"
              "### Input:\n1 2\n\n### Response:\n")
    assert example["input_ids"] == [*prompt.encode(), ord("3"), EOS]
    assert example["labels"] == [IGNORE_INDEX] * len(prompt) + [ord("3"), EOS]
    prompt = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
              "request.\n\n### Instruction:\nSay hi\n\n### Response:\n")
    assert build_example(without, byte_tokenizer, template="alpaca")["input_ids"] == [*prompt.encode(), *b"hi", EOS]


def test_every_reply_of_a_conversation_is_trained(byte_tokenizer):
    example = build_example({"messages": CONVERSATIONS[1]}, byte_tokenizer)
    scored = bytes(i for i, label in zip(example["input_ids"], example["labels"], strict=True)
                   if label != IGNORE_INDEX and i != EOS)
    assert scored == b" Hello there!a b"
    assert sum(label == EOS for label in example["labels"]) == 2  # each reply's end-of-text


def test_truncation_keeps_the_prompt_and_warns_with_the_line(byte_tokenizer, tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"instruction": "Hi", "output": "a long answer"}) + "\n", encoding="utf-8")
    record = read_sft_records(path)[0]
    full = build_example(record, byte_tokenizer)
    with pytest.warns(UserWarning, match=rf"{path}:1: .*cut on the right.*end-of-text"):
        cut = build_example(record, byte_tokenizer, max_length=len(full["input_ids"]) - 4)
    assert cut["input_ids"] == full["input_ids"][:-4] and cut["labels"] == full["labels"][:-4]
    with pytest.raises(DataError, match=rf"{path}:1: the prompt alone .* not one reply token"):
        build_example(record, byte_tokenizer, max_length=5)


@pytest.mark.parametrize("line, message", [
    ('{"instruction": "x"}', r"missing 'output'"),
    ('{"input": "x", "output": "y"}', r"missing 'instruction'"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', r"unknown role 'robot'"),
    ('{"messages": [{"role": "user", "content": "x"}]}', r"no assistant message"),
    ('{"messages": [{"role": "user"}]}', r"'role' and 'content'"),
    ('{"instruction": "x", "output": 3}', r"'output' must be a string"),
    ("not json", r"bad JSON"),
    ("[1, 2]", r"expected a JSON object"),
])
def test_bad_records_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"instruction": "ok", "input": "", "output": "fine"}) + "\n\n" + line + "\n",
                    encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:3: .*{message}"):
        read_sft_records(path)


# --- packing ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A random tiny GPT-2 written by transformers (weights scaled up, so that a wrong mask shows), and
    minift's copies of it with each attention implementation."""
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=EOS + 1, n_positions=128, n_embd=32, n_layer=2, n_head=4, bos_token_id=EOS, eos_token_id=EOS,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    ref.save_pretrained(folder)
    return ref, {impl: GPT2LMHeadModel.from_pretrained(folder, attn_impl=impl).eval() for impl in ("eager", "sdpa")}


def _examples(tokenizer, seed: int, n: int = 7) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    words = ["cat", "dog", "sun", "tree", "a", "river"]
    examples = []
    for _ in range(n):
        pick = [words[int(i)] for i in torch.randint(0, len(words), (int(torch.randint(1, 4, (1,), generator=gen)),),
                                                    generator=gen)]
        record = {"messages": [{"role": "user", "content": " ".join(pick)},
                               {"role": "assistant", "content": " ".join(reversed(pick))}]}
        examples.append(build_example(record, tokenizer, train_on_prompt=bool(seed % 2)))
    return examples


def test_pack_examples_layout(byte_tokenizer):
    examples = _examples(byte_tokenizer, 0)
    lengths = [len(e["input_ids"]) for e in examples]
    block = max(lengths) + 10
    blocks = pack_examples(examples, block)
    assert [i for b in blocks for i in b["input_ids"]] == [i for e in examples for i in e["input_ids"]]
    assert all(len(b["input_ids"]) <= block for b in blocks) and len(blocks) < len(examples)
    restarts = [p for b in blocks for p in b["position_ids"] if p == 0]
    assert len(restarts) == len(examples)
    with pytest.raises(ValueError, match="example 0 has .* tokens, more than block_size"):
        pack_examples(examples, lengths[0] - 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_packed_loss_equals_unpacked_loss(byte_tokenizer, tiny_lm, seed, impl):
    """The loss is the mean over every scored next token of the batch (sum of their NLL / their count);
    packed into blocks (position_ids restarting, no attention_mask) or padded one example per row, the
    same tokens are scored from the same contexts: the two losses agree to float32 rounding. Seed 1 scores
    the prompts too (train_on_prompt), where the border token matters most."""
    _, ours = tiny_lm
    examples = _examples(byte_tokenizer, seed)
    unpacked = sft_collate(examples, EOS)
    packed = sft_collate(pack_examples(examples, 128), EOS)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]
    model = ours[impl]
    with torch.no_grad():
        a, b = model(**unpacked).loss, model(**packed).loss
    assert abs(a.item() - b.item()) <= 1e-5, (a.item(), b.item())
    # Without the per-example mask the packed loss is another number: the test can fail.
    with torch.no_grad():
        leaked = model(packed["input_ids"], labels=packed["labels"]).loss
    assert abs(leaked.item() - a.item()) > 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_logits_match_transformers(byte_tokenizer, tiny_lm, seed):
    """transformers 5 reads the same position_ids as packed examples (masking_utils.find_packed_sequence_indices):
    same logits (1e-5) and loss, both implementations."""
    ref, ours = tiny_lm
    batch = sft_collate(pack_examples(_examples(byte_tokenizer, seed), 100), EOS)
    with torch.no_grad():
        expected = ref(**batch, use_cache=False)
        for model in ours.values():
            got = model(**batch)
            assert max_diff(got.logits, expected.logits) <= 1e-5
            assert abs(got.loss.item() - expected.loss.item()) <= 1e-5


def test_a_token_merging_across_the_prompt_end_is_warned(gpt2_tokenizers):
    """A template whose prompt ends in a space: the whole text encodes " yes" as one token, the pieces as
    " " and "yes". build_example says so, naming the record, and keeps the pieces (labels and ids agree)."""
    ours, _ = gpt2_tokenizers
    template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + ' A: ' }}"
                "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}{% endif %}")
    record = {"messages": [{"role": "user", "content": "ok?"}, {"role": "assistant", "content": "yes"}],
              "source": "data.jsonl:7"}
    with pytest.warns(UserWarning, match=r"data.jsonl:7: the template's pieces encode to other ids"):
        example = build_example(record, ours, template=template)
    assert ours.decode([i for i, label in zip(example["input_ids"], example["labels"], strict=True)
                        if label != IGNORE_INDEX]) == "yes<|endoftext|>"
