"""transformers' names in minift: the Auto classes choose through the table of architectures; the
tokenizers under transformers' names answer transformers' call forms with transformers' outputs
(real MiniLM vocabulary, GPT-2's real vocabulary when ../shared/data has it, the byte vocabulary
otherwise; hand-written and fast); model outputs index as transformers' do; and what minift does not
take is refused with what to write instead."""

import dataclasses

import pytest
import torch
import transformers
from tests_support import write_byte_bpe

import minift.tokenizer as mt
from minift.models import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
)
from minift.models.architectures import ARCHITECTURES, Architecture
from minift.outputs import ModelOutput

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------
# Auto classes
# ----------------------------------------------------------------------------------------------------


def test_auto_classes_choose_by_model_type(minilm_dir, tmp_path):
    assert type(AutoModel.from_pretrained(minilm_dir)).__name__ == "BertModel"
    with pytest.warns(UserWarning, match="newly initialised"):
        model = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=3)
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == 3
    assert type(AutoConfig.from_pretrained(minilm_dir)) is BertConfig
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_head=2, n_layer=1, vocab_size=50,
                                                                n_positions=16))
    gpt2.save_pretrained(tmp_path / "gpt2")
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2")).__name__ == "GPT2LMHeadModel"
    assert type(AutoModelForTokenClassification.from_pretrained(tmp_path / "gpt2", strict=False)).__name__ == \
        "GPT2ForTokenClassification"
    assert type(AutoModelForMaskedLM.from_config(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                                                            num_attention_heads=2, intermediate_size=8))).__name__ \
        == "BertForMaskedLM"
    with pytest.raises(ValueError, match=r"config.json: model_type 'bert' has no causal-lm head in minift \(it has: "):
        AutoModelForCausalLM.from_pretrained(minilm_dir)
    with pytest.raises(TypeError, match="use AutoModel.from_pretrained"):
        AutoModel()


def test_a_new_row_of_the_table_joins_every_auto_class(monkeypatch):
    """An architecture added to ARCHITECTURES (here BERT under another model_type) is found by the
    Auto classes with no change to auto.py: they look nothing up but the table."""

    @dataclasses.dataclass
    class OtherConfig(BertConfig):
        model_type = "other-bert"

    row = dataclasses.replace(ARCHITECTURES["bert"], model_type="other-bert", config_class=OtherConfig)
    assert isinstance(row, Architecture)
    monkeypatch.setitem(ARCHITECTURES, "other-bert", row)
    config = OtherConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    assert type(AutoModelForSequenceClassification.from_config(config)) is BertForSequenceClassification
    assert AutoModel.model_class("other-bert") is ARCHITECTURES["bert"].heads["base"]


# ----------------------------------------------------------------------------------------------------
# Tokenizers: transformers' call forms, transformers' outputs
# ----------------------------------------------------------------------------------------------------

CALLS = [
    (("Hello world!",), {}),
    (("Hello world!",), {"return_tensors": "pt"}),
    ((["Hello world!", "a b", "Zürich, café"],), {"padding": True}),
    ((["Hello world!", "a b"],), {"padding": "longest", "return_tensors": "pt", "return_attention_mask": False}),
    (("Hello", "world"), {}),
    ((["a b c d e f", "x"], ["y", "z"]), {"truncation": True, "max_length": 5, "padding": "max_length",
                                          "return_tensors": "pt"}),
    ((["Hello", "world!"],), {"is_split_into_words": True}),
    (([["Hello", "world!"], ["a", "b", "c"]],), {"is_split_into_words": True, "padding": True}),
    (("a b c d e f g",), {"max_length": 4}),
    (("a b c",), {"add_special_tokens": False}),
    ((["x y", "z"],), {"padding": True, "padding_side": "left"}),
]


def plain(batch) -> dict:
    return {key: value.tolist() if isinstance(value, torch.Tensor) else value for key, value in dict(batch).items()}


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """GPT-2's real vocabulary from ../shared/data when present; else the byte vocabulary (no merges)."""
    from conftest import SHARED_DATA

    folder = tmp_path_factory.mktemp("gpt2-tokenizer")
    if (SHARED_DATA / "gpt2" / "vocab.json").is_file():
        mt.ByteLevelBPETokenizer.from_pretrained(SHARED_DATA / "gpt2").save_pretrained(folder)
    else:
        write_byte_bpe(folder)
    return folder


@pytest.mark.parametrize("name", ["BertTokenizer", "BertTokenizerFast", "GPT2Tokenizer", "GPT2TokenizerFast"])
def test_tokenizer_call_forms_match_transformers(name, minilm_dir, gpt2_folder):
    folder = minilm_dir if name.startswith("Bert") else gpt2_folder
    ours, theirs = getattr(mt, name).from_pretrained(folder), getattr(transformers, name).from_pretrained(folder)
    if name.startswith("GPT2"):
        ours.pad_token = ours.eos_token  # what programs write: GPT-2 has no pad token
        theirs.pad_token = theirs.eos_token
    for args, kwargs in CALLS:
        assert plain(ours(*args, **kwargs)) == plain(theirs(*args, **kwargs)), (args, kwargs)
    for text in ("Hello there, wörld!", "a  b\tc"):
        assert ours.encode(text) == theirs.encode(text)
        assert ours.encode(text, return_tensors="pt").tolist() == theirs.encode(text, return_tensors="pt").tolist()
        # encode_plus is transformers 4's name for a call on one text (5.x dropped it; programs still use it)
        assert plain(ours.encode_plus(text, max_length=3)) == plain(theirs(text, max_length=3))
        ids = theirs(text)["input_ids"]
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
            assert ours.decode(torch.tensor(ids), skip_special_tokens=skip) == theirs.decode(
                torch.tensor(ids), skip_special_tokens=skip)
        assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)
        tokens = theirs.tokenize(text)
        assert ours.tokenize(text) == tokens and ours.convert_tokens_to_ids(tokens) == theirs.convert_tokens_to_ids(tokens)
    batch = theirs(["one two", "three"], padding=True, return_tensors="pt")["input_ids"]
    assert ours.batch_decode(batch, skip_special_tokens=True) == theirs.batch_decode(batch, skip_special_tokens=True)
    assert (ours.pad_token, ours.eos_token, ours.model_max_length, ours.padding_side) == (
        theirs.pad_token, theirs.eos_token, theirs.model_max_length, theirs.padding_side)
    assert len(ours) == len(theirs)
    if name.endswith("Fast"):
        for args, kwargs in CALLS[:3]:
            assert plain(ours(*args, return_offsets_mapping=True, **kwargs)) == plain(
                theirs(*args, return_offsets_mapping=True, **kwargs))


def test_auto_tokenizer_and_settings(minilm_dir, gpt2_folder, tmp_path):
    assert type(mt.AutoTokenizer.from_pretrained(minilm_dir)).__name__ == "BertTokenizerFast"  # fast, as transformers
    assert type(mt.AutoTokenizer.from_pretrained(minilm_dir, use_fast=False)).__name__ == "BertTokenizer"
    tokenizer = mt.AutoTokenizer.from_pretrained(gpt2_folder, padding_side="left")
    assert type(tokenizer).__name__ == "GPT2TokenizerFast" and tokenizer.padding_side == "left"
    with pytest.raises(ValueError, match=r"Asking to pad but the tokenizer does not have a padding token.*"
                                         r"tokenizer.pad_token = tokenizer.eos_token"):
        tokenizer(["a", "b c"], padding=True)
    tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(["a", "b c"], padding=True, return_tensors="pt")
    assert batch.attention_mask.tolist()[0][0] == 0 and batch.input_ids.shape == batch["input_ids"].shape
    assert batch.to("cpu") is batch and batch.word_ids(1) == batch.word_ids(batch_index=1)
    with pytest.raises(ValueError, match="is not in the vocabulary"):
        tokenizer.pad_token = "[NOT-A-TOKEN]"
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer"}')
    with pytest.raises(ValueError, match=r"tokenizer_class 'T5Tokenizer' is not a tokenizer minift implements"):
        mt.AutoTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("call,message", [
    (lambda t: t("hi", return_offsets_mapping=True),
     r"BertTokenizer is minift's hand-written tokenizer.*BertTokenizerFast"),
    (lambda t: t("hi", stride=2), r"do not implement \['stride'\]"),
    (lambda t: t("hi", truncation="only_second"), r"truncation='only_second': minift truncates longest first"),
    (lambda t: t("hi", return_tensors="np"), r"return_tensors must be 'pt' or None"),
    (lambda t: t(["a", "a b"], return_tensors="pt"), r"cannot stack into one tensor; pass padding=True"),
    (lambda t: t("hi", is_split_into_words=True), r"is_split_into_words=True expects a list of words"),
])
def test_tokenizer_differences_say_what_to_write(minilm_dir, call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call(mt.BertTokenizer.from_pretrained(minilm_dir))


# ----------------------------------------------------------------------------------------------------
# Outputs and arguments
# ----------------------------------------------------------------------------------------------------


def test_outputs_index_as_transformers(minilm_dir):
    tokenizer = mt.BertTokenizerFast.from_pretrained(minilm_dir)
    batch = tokenizer(["a good film", "bad"], padding=True, return_tensors="pt")
    with pytest.warns(UserWarning):
        ours = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    torch.manual_seed(0)
    theirs = transformers.BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    theirs.load_state_dict(ours.state_dict())
    labels = torch.tensor([1, 0])
    for with_labels in (False, True):
        kwargs = {"labels": labels} if with_labels else {}
        got, want = ours(**batch, **kwargs), theirs(**batch, **kwargs)
        assert list(got.keys()) == [k for k in want if k in ("loss", "logits")]
        assert len(got.to_tuple()) == len(want.to_tuple())
        for i in range(len(got)):
            assert (got[i] - want[i]).abs().max() <= 1e-5  # out[0] is the loss with labels, the logits without
        assert torch.equal(got["logits"], got.logits) and "loss" in got if with_labels else "loss" not in got
    with pytest.raises(KeyError, match=r"has no 'hidden_states' here \(it holds: logits\)"):
        ours(**batch)["hidden_states"]
    assert isinstance(ours.bert(**batch), ModelOutput)
    assert torch.equal(ours.bert(**batch)[0], ours.bert(**batch).last_hidden_state)


def test_arguments_minift_does_not_take_are_refused(minilm_dir):
    model = AutoModel.from_pretrained(minilm_dir)
    ids = torch.tensor([[101, 7592, 102]])
    assert torch.equal(model(ids, return_dict=True, output_hidden_states=False)[0], model(ids)[0])  # neutral values
    with pytest.raises(TypeError, match=r"BertModel.forward got \['output_attentions'\].*instead of output_attentions: "
                                        r"a forward hook"):
        model(ids, output_attentions=True)
    with pytest.raises(TypeError, match=r"got \['device_map'\], which are not fields of BertConfig; instead of "
                                        r"device_map: model.to\(device\)"):
        AutoModel.from_pretrained(minilm_dir, device_map="auto")
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_embd=16, n_head=2, n_layer=1, vocab_size=50, n_positions=16))
    with pytest.raises(TypeError, match=r"instead of token_type_ids: nothing: GPT-2 has no segment embeddings"):
        gpt2(torch.tensor([[1, 2]]), token_type_ids=torch.tensor([[0, 0]]))
