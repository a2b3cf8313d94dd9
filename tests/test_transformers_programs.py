"""Programs written for transformers run on minift by changing only their imports.

Each program below is the kind of code tutorials show: fine-tune BertForSequenceClassification,
tag words with BertForTokenClassification, train a classifier on BertModel's [CLS] vector, sample
and search with GPT2LMHeadModel. Its text is fixed; only the import lines are filled in, once with
transformers' (and torch.optim.AdamW) and once with minift's (and minift.optim.AdamW). Both run on
the same weights -- the real all-MiniLM-L6-v2 with a head saved by transformers, dropout off so that
training is deterministic, and a small random GPT-2 -- and must give the same results: the same
predictions and generated tokens; losses within 1e-4 (three AdamW steps of float32: Adam's first
steps move every weight by about lr whatever the size of its gradient, so rounding differences in
tiny gradients show up at that scale; the observed differences are ~1e-6).
"""

import shutil
import warnings

import pytest
import torch
import transformers
from tests_support import write_byte_bpe

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")  # small models and batches: see tests/conftest.py

IMPORTS = {
    "transformers": {
        "classify": "from transformers import BertTokenizer, BertForSequenceClassification\n"
                    "from torch.optim import AdamW",
        "tag": "from transformers import AutoTokenizer, BertForTokenClassification\nfrom torch.optim import AdamW",
        "cls-vector": "from transformers import AutoTokenizer, BertModel\nfrom torch.optim import AdamW",
        "sample": "from transformers import GPT2Tokenizer, GPT2LMHeadModel",
    },
    "minift": {
        "classify": "from minift.tokenizer import BertTokenizer\nfrom minift.models import BertForSequenceClassification\n"
                    "from minift.optim import AdamW",
        "tag": "from minift.tokenizer import AutoTokenizer\nfrom minift.models import BertForTokenClassification\n"
               "from minift.optim import AdamW",
        "cls-vector": "from minift.tokenizer import AutoTokenizer\nfrom minift.models import BertModel\n"
                      "from minift.optim import AdamW",
        "sample": "from minift.tokenizer import GPT2Tokenizer\nfrom minift.models import GPT2LMHeadModel",
    },
}

PROGRAMS = {
    "classify": '''
import torch

def main(path, texts, labels):
    tokenizer = BertTokenizer.from_pretrained(path)
    model = BertForSequenceClassification.from_pretrained(path)
    optimizer = AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    labels = torch.tensor(labels)
    model.train()
    losses = []
    for _ in range(3):
        outputs = model(**batch, labels=labels)
        loss = outputs.loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch.attention_mask)
    logits = outputs.logits
    assert torch.equal(outputs[0], logits) and torch.equal(outputs["logits"], logits)
    return {"losses": losses, "logits": logits, "predictions": logits.argmax(dim=-1).tolist(),
            "ids": tokenizer.encode(texts[0], return_tensors="pt"), "text": tokenizer.decode(batch["input_ids"][0],
            skip_special_tokens=True)}
''',
    "tag": '''
import torch

def main(path, sentences, tags, names):
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertForTokenClassification.from_pretrained(path)
    encoding = tokenizer(sentences, is_split_into_words=True, truncation=True, padding=True,
                         return_tensors="pt", return_offsets_mapping=True)
    offsets = encoding.pop("offset_mapping")
    labels = []
    for i, sentence_tags in enumerate(tags):  # label the first sub-token of each word, -100 elsewhere
        previous, row = None, []
        for word in encoding.word_ids(batch_index=i):
            row.append(-100 if word is None or word == previous else sentence_tags[word])
            previous = word
        labels.append(row)
    labels = torch.tensor(labels)
    optimizer = AdamW(model.parameters(), lr=1e-4)
    model.train()
    losses = []
    for _ in range(3):
        loss = model(**encoding, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = model(**encoding).logits
    predicted = logits.argmax(-1)
    words = []
    for i in range(len(sentences)):
        previous, row = None, []
        for position, word in enumerate(encoding.word_ids(i)):
            if word is not None and word != previous:
                row.append(names[predicted[i, position].item()])
            previous = word
        words.append(row)
    return {"losses": losses, "logits": logits, "tags": words, "offsets": offsets}
''',
    "cls-vector": '''
import torch

class Classifier(torch.nn.Module):
    def __init__(self, path, num_classes):
        super().__init__()
        self.bert = BertModel.from_pretrained(path)
        torch.manual_seed(0)
        self.head = torch.nn.Linear(self.bert.config.hidden_size, num_classes)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        outputs = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        cls_vector = outputs.last_hidden_state[:, 0]
        assert torch.equal(outputs[0][:, 0], cls_vector)
        return self.head(cls_vector)

def main(path, texts, labels):
    tokenizer = AutoTokenizer.from_pretrained(path, use_fast=False)
    model = Classifier(path, 3)
    optimizer = AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = tokenizer(texts, padding="max_length", max_length=24, truncation=True, return_tensors="pt")
    labels = torch.tensor(labels)
    losses = []
    for _ in range(3):
        loss = loss_fn(model(**batch), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    with torch.no_grad():
        logits = model(**batch)
    return {"losses": losses, "logits": logits, "predictions": logits.argmax(-1).tolist()}
''',
    "sample": '''
import torch

def main(path, prompts):
    tokenizer = GPT2Tokenizer.from_pretrained(path)
    model = GPT2LMHeadModel.from_pretrained(path)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    sampled = model.generate(**inputs, max_length=24, num_return_sequences=3, do_sample=True, top_k=50,
                             top_p=0.95, pad_token_id=tokenizer.eos_token_id)
    beams = model.generate(**inputs, max_new_tokens=8, num_beams=4, no_repeat_ngram_size=2, early_stopping=True,
                           num_return_sequences=2, pad_token_id=tokenizer.eos_token_id)
    input_ids = tokenizer.encode(prompts[0], return_tensors="pt")
    greedy = model.generate(input_ids, max_new_tokens=6, repetition_penalty=1.3)
    return {"sampled": sampled, "texts": tokenizer.batch_decode(sampled, skip_special_tokens=True),
            "beams": beams, "greedy": tokenizer.decode(greedy[0], skip_special_tokens=True)}
''',
}


def run(program: str, library: str, *args):
    source = IMPORTS[library][program] + "\n" + PROGRAMS[program]
    namespace = {}
    exec(compile(source, f"<{program} program, {library} imports>", "exec"), namespace)  # noqa: S102 - running the program is the test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return namespace["main"](*args)


def bert_checkpoint(minilm_dir, folder, head, **config):
    """MiniLM with `head` saved by transformers (dropout off), and MiniLM's tokenizer files."""
    torch.manual_seed(0)
    getattr(transformers, head).from_pretrained(minilm_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                                **config).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        shutil.copy(minilm_dir / name, folder / name)
    return folder


def assert_same(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key, want in theirs.items():
        got = ours[key]
        if key == "losses":
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-4, (got, want)
        elif key == "logits":
            assert (got - want).abs().max() <= 1e-4, key
        elif isinstance(want, torch.Tensor):
            assert torch.equal(got, want), key
        else:
            assert got == want, key


TEXTS = ["a gripping, beautifully acted film", "dull and far too long", "I loved every minute of it",
         "the plot makes no sense at all"]


def test_fine_tuning_bert_for_sequence_classification(minilm_dir, tmp_path):
    path = bert_checkpoint(minilm_dir, tmp_path / "cls", "BertForSequenceClassification", num_labels=2)
    theirs = run("classify", "transformers", path, TEXTS, [1, 0, 1, 0])
    ours = run("classify", "minift", path, TEXTS, [1, 0, 1, 0])
    assert_same(ours, theirs)
    assert theirs["losses"][-1] < theirs["losses"][0]  # it trained


def test_tagging_with_bert_for_token_classification(minilm_dir, tmp_path):
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    path = bert_checkpoint(minilm_dir, tmp_path / "tag", "BertForTokenClassification", num_labels=len(names))
    sentences = [["Ada", "Lovelace", "lived", "in", "London"], ["Zürich", "is", "lovely"]]
    tags = [[1, 2, 0, 0, 3], [3, 0, 0]]
    theirs = run("tag", "transformers", path, sentences, tags, names)
    ours = run("tag", "minift", path, sentences, tags, names)
    assert_same(ours, theirs)


def test_a_classifier_on_bert_model_cls_vector(minilm_dir, tmp_path):
    path = bert_checkpoint(minilm_dir, tmp_path / "base", "BertModel")
    theirs = run("cls-vector", "transformers", path, TEXTS, [2, 0, 1, 0])
    ours = run("cls-vector", "minift", path, TEXTS, [2, 0, 1, 0])
    assert_same(ours, theirs)


def test_sampling_and_beam_search_with_gpt2_lm_head_model(tmp_path):
    path = write_byte_bpe(tmp_path / "gpt2")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_head=4, n_layer=2, vocab_size=257, n_positions=64, bos_token_id=256, eos_token_id=256))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    model.save_pretrained(path)
    prompts = ["Once upon a time", "The cat"]
    theirs = run("sample", "transformers", path, prompts)
    ours = run("sample", "minift", path, prompts)
    assert_same(ours, theirs)
    assert theirs["sampled"].shape[0] == 6 and theirs["beams"].shape[0] == 4


def test_the_programs_differ_only_in_their_imports():
    for program in PROGRAMS:
        for library in IMPORTS:
            lines = IMPORTS[library][program].splitlines()
            assert all(line.startswith(("from ", "import ")) for line in lines)
