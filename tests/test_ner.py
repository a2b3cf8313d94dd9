"""NER: the tagging head, label alignment, word predictions, entity spans, evaluation, the recipe.

References: transformers' BertForTokenClassification (logits, loss, gradients), BertTokenizerFast with
``is_split_into_words=True`` and the label alignment of transformers' run_ner.py example (the
"standard HF recipe"), seqeval and scikit-learn for the scores.
"""

import json
import warnings

import pytest
import torch
import transformers
from seqeval.metrics import classification_report as seqeval_report
from sklearn.metrics import accuracy_score

from minift.data import DataError, LabelMap, read_conll
from minift.data.collate import make_token_classification_collate
from minift.losses import IGNORE_INDEX
from minift.models import BertForTokenClassification
from minift.tokenizer import load_tokenizer
from minift.train.finetune import finetune_ner
from minift.train.tasks.ner import (
    evaluate_ner,
    ner_labels,
    predict_entities,
    read_ner,
    split_words,
    word_predictions,
)

transformers.logging.set_verbosity_error()
CPU = torch.device("cpu")


def tiny_config(**kw) -> transformers.BertConfig:
    base = {"vocab_size": 97, "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 3,
            "intermediate_size": 37, "max_position_embeddings": 40, "type_vocab_size": 2,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "num_labels": 5}
    return transformers.BertConfig(**{**base, **kw})


def wnut(shared_data, split="train", n=None):
    sentences = read_conll(shared_data / "wnut17" / f"{split}.conll")
    return sentences[:n] if n else sentences


def hf_recipe(hf_tokenizer, sentences, labels: LabelMap, max_length: int, label_all: bool) -> dict:
    """transformers' run_ner.py tokenize_and_align_labels, written out as the example does it."""
    enc = hf_tokenizer([w for w, _ in sentences], is_split_into_words=True, truncation=True,
                       max_length=max_length, padding="longest", return_tensors="pt")
    rows = []
    for i, (_, tags) in enumerate(sentences):
        previous, row = None, []
        for word in enc.word_ids(i):
            if word is None:
                row.append(-100)
            elif word != previous:
                row.append(labels.label2id[tags[word]])
            elif label_all:
                tag = tags[word]
                inside = "I-" + tag[2:] if tag.startswith("B-") else tag
                row.append(labels.label2id[inside if inside in labels.label2id else tag])
            else:
                row.append(-100)
            previous = word
        rows.append(row)
    return {**enc, "labels": torch.tensor(rows)}, enc


# --- the model against transformers -----------------------------------------------------------------------


def compare_forward_backward(ours, ref, batch):
    """Logits, loss and every gradient of one forward/backward on the same batch."""
    out, ref_out = ours(**batch), ref(**batch)
    # fp32 activations: hand-written layers vs transformers' fused ones, 1e-5 abs
    assert (out.logits - ref_out.logits).abs().max().item() <= 1e-5
    assert abs(out.loss.item() - ref_out.loss.item()) <= 1e-5  # a mean of per-token fp32 losses
    out.loss.backward()
    ref_out.loss.backward()
    ref_grads = dict(ref.named_parameters())
    worst = 0.0
    for name, p in ours.named_parameters():
        ref_grad = ref_grads[name].grad
        if p.grad is None:
            assert ref_grad is None or ref_grad.abs().max() == 0, name
            continue
        worst = max(worst, (p.grad - ref_grad).abs().max().item())
    assert worst <= 1e-5  # fp32 gradients, same tolerance as the activations
    return worst


@pytest.mark.parametrize("seed,batch,length,attn_impl",
                         [(0, 3, 11, "eager"), (1, 5, 7, "sdpa"), (2, 1, 23, "eager")])
def test_head_matches_transformers_on_random_config(tmp_path, seed, batch, length, attn_impl):
    torch.manual_seed(seed)
    ref = transformers.BertForTokenClassification(tiny_config())
    ref.save_pretrained(tmp_path)
    ours = BertForTokenClassification.from_pretrained(tmp_path, attn_impl=attn_impl)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 97, (batch, length), generator=g)
    lengths = torch.randint(2, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()  # (B, T), right padding
    labels = torch.randint(0, 5, (batch, length), generator=g).masked_fill(mask == 0, -100)
    labels[:, 0] = -100  # [CLS]
    compare_forward_backward(ours, ref, {"input_ids": ids * mask, "attention_mask": mask, "labels": labels,
                                         "token_type_ids": torch.zeros_like(ids)})


def test_head_matches_transformers_on_minilm(minilm_dir, shared_data):
    """Real weights and real WNUT sentences (aligned labels with -100), a seeded 13-label head."""
    sentences = wnut(shared_data, n=6)
    labels = ner_labels(wnut(shared_data))
    torch.manual_seed(0)
    ref = transformers.BertForTokenClassification.from_pretrained(minilm_dir, num_labels=len(labels))
    ours = BertForTokenClassification.from_pretrained(minilm_dir, num_labels=len(labels))
    ours.classifier.load_state_dict(ref.classifier.state_dict())
    ref.eval()
    batch = make_token_classification_collate(load_tokenizer(minilm_dir), labels)(sentences)
    compare_forward_backward(ours, ref, batch)


# --- alignment against the standard transformers recipe ---------------------------------------------------


@pytest.mark.parametrize("fast", [False, True])
def test_alignment_equals_the_transformers_recipe(minilm_dir, shared_data, fast):
    """input_ids, masks and labels identical to BertTokenizerFast(is_split_into_words=True) + run_ner's
    alignment, with and without truncation and label_all_subtokens, on 300 WNUT sentences including the
    longest ones and words the normalizer empties."""
    hf = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    train = wnut(shared_data)
    labels = ner_labels(train)
    sentences = train[:200] + sorted(train, key=lambda s: -len(s[0]))[:100]
    tokenizer = load_tokenizer(minilm_dir, fast=fast)
    for max_length in (16, 128):
        for label_all in (False, True):
            collate = make_token_classification_collate(tokenizer, labels, max_length=max_length,
                                                        label_all_subtokens=label_all, keep_words=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for start in range(0, len(sentences), 50):
                    chunk = sentences[start:start + 50]
                    ours = collate(chunk)
                    ref, enc = hf_recipe(hf, chunk, labels, max_length, label_all)
                    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
                        assert torch.equal(ours[key], ref[key]), (key, max_length, label_all, start)
                    ref_words = torch.tensor([[-1 if w is None else w for w in enc.word_ids(i)]
                                              for i in range(len(chunk))])
                    assert torch.equal(ours["word_ids"], ref_words)


def test_label_all_subtokens_turns_b_into_i(minilm_dir):
    tokenizer = load_tokenizer(minilm_dir)
    labels = LabelMap(["O", "B-loc", "B-x", "I-loc"])  # no I-x: B-x is kept, as run_ner.py does
    words, tags = ["Empire", "ESB", "ESB"], ["B-loc", "B-loc", "B-x"]  # "esb" -> "es", "##b"
    batch = make_token_classification_collate(tokenizer, labels, label_all_subtokens=True)([(words, tags)])
    assert batch["labels"].tolist() == [[-100, 1, 1, 3, 2, 2, -100]]
    batch = make_token_classification_collate(tokenizer, labels)([(words, tags)])
    assert batch["labels"].tolist() == [[-100, 1, 1, -100, 2, -100, -100]]


# --- words -> sub-tokens -> words -------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [False, True])
def test_round_trip_words_tokens_words(minilm_dir, shared_data, fast):
    """Predicting each token's aligned label gives back every word's gold tag; words cut by truncation
    come back "O" and a warning is shown once per collate."""
    train = wnut(shared_data)
    labels = ner_labels(train)
    sentences = sorted(train, key=lambda s: -len(s[0]))[:40]
    for max_length, expect_cut in ((512, False), (24, True)):
        collate = make_token_classification_collate(load_tokenizer(minilm_dir, fast=fast), labels,
                                                    max_length=max_length, keep_words=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batch = collate(sentences)
        assert len(caught) == int(expect_cut)
        # label ids where aligned; anything else (here 0) where the token is not a first sub-token
        predicted = batch["labels"].clamp(min=0)
        n_cut = 0
        for row, (words, tags) in enumerate(sentences):
            back = word_predictions(predicted[row].tolist(), batch["word_ids"][row].tolist(), len(words),
                                    labels.id2label)
            seen = set(batch["word_ids"][row].tolist())
            expected = [tag if i in seen else "O" for i, tag in enumerate(tags)]
            n_cut += sum(i not in seen for i in range(len(words)))
            assert back == expected
        if not expect_cut:
            assert n_cut <= 2  # only words the normalizer empties (zero-width characters) have no token
        else:
            assert n_cut > 100


# --- raw text -> entities with character spans ------------------------------------------------------------


class LookupTagger(torch.nn.Module):
    """A stand-in model whose tag for each token depends only on the token id."""

    def __init__(self, table: dict[int, int], num_labels: int):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.table, self.num_labels = table, num_labels

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        tags = torch.tensor([[self.table.get(i, 0) for i in row] for row in input_ids.tolist()])
        logits = torch.nn.functional.one_hot(tags, self.num_labels).float() * self.scale  # (B, T, L)
        return type("Out", (), {"logits": logits, "loss": None})()


def test_predict_entities_gives_character_spans(minilm_dir):
    tokenizer = load_tokenizer(minilm_dir)
    labels = LabelMap(["O", "B-person", "I-person", "B-location", "I-location"])
    vocab = tokenizer.vocab
    table = {vocab["ann"]: 1, vocab["marie"]: 2, vocab["new"]: 3, vocab["york"]: 4, vocab["paris"]: 3}
    model = LookupTagger(table, len(labels))
    text = "  Meet Ann-Marie in New   York,today!  Then Paris.\n"
    entities = predict_entities(model, tokenizer, text, labels.id2label)
    expected = [("person", "Ann-Marie"), ("location", "New   York"), ("location", "Paris")]
    assert entities == [{"type": t, "text": e, "start": text.index(e), "end": text.index(e) + len(e)}
                        for t, e in expected]
    for e in entities:
        assert text[e["start"]:e["end"]] == e["text"]
    assert predict_entities(model, tokenizer, "  \n ", labels.id2label) == []
    assert [w for w, _, _ in split_words("don't stop, Jean-Luc!")] == ["don't", "stop", ",", "Jean-Luc", "!"]


def test_predict_entities_warns_when_text_is_cut(minilm_dir):
    tokenizer = load_tokenizer(minilm_dir)
    labels = LabelMap(["O", "B-location"])
    model = LookupTagger({tokenizer.vocab["paris"]: 1}, 2)
    with pytest.warns(UserWarning, match="its last 3 words are not read"):
        entities = predict_entities(model, tokenizer, "Paris a b c d Paris", labels.id2label, max_length=5)
    assert entities == [{"type": "location", "text": "Paris", "start": 0, "end": 5}]


# --- evaluation against seqeval ---------------------------------------------------------------------------


def test_evaluate_ner_equals_seqeval(tmp_path, minilm_dir, shared_data):
    """A random small tagger over the MiniLM vocabulary: its predictions, mapped to words through
    transformers' word_ids, scored by seqeval and scikit-learn, give evaluate_ner's numbers (1e-12:
    both are ratios of the same integer counts)."""
    train, dev = wnut(shared_data), wnut(shared_data, "dev", 96)
    labels = ner_labels(train)
    torch.manual_seed(0)
    config = tiny_config(vocab_size=30522, max_position_embeddings=512, num_labels=len(labels),
                         initializer_range=0.5, id2label=labels.id2label, label2id=labels.label2id)
    transformers.BertForTokenClassification(config).save_pretrained(tmp_path)
    model = BertForTokenClassification.from_pretrained(tmp_path)
    collate = make_token_classification_collate(load_tokenizer(minilm_dir), labels, keep_words=True)
    loader = [collate(dev[i:i + 32]) for i in range(0, len(dev), 32)]
    ours = evaluate_ner(model, loader, CPU, labels.id2label)

    hf = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    y_true, y_pred, loss_sum, n = [], [], 0.0, 0
    with torch.no_grad():
        for i in range(0, len(dev), 32):
            chunk = dev[i:i + 32]
            batch, enc = hf_recipe(hf, chunk, labels, 128, False)
            out = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")})
            count = int((batch["labels"] != -100).sum())
            loss_sum, n = loss_sum + out.loss.item() * count, n + count
            for row, (words, tags) in enumerate(chunk):
                pred, done = ["O"] * len(words), set()
                for t, word in enumerate(enc.word_ids(row)):
                    if word is not None and word not in done:
                        done.add(word)
                        pred[word] = labels.id2label[int(out.logits[row, t].argmax())]
                y_true.append(tags)
                y_pred.append(pred)
    ref = seqeval_report(y_true, y_pred, output_dict=True, zero_division=0)
    assert len({tuple(p) for p in y_pred}) > 10  # the predictions are varied, not all "O"
    assert abs(ours["f1"] - ref["micro avg"]["f1-score"]) <= 1e-12
    assert abs(ours["precision"] - ref["micro avg"]["precision"]) <= 1e-12
    assert abs(ours["recall"] - ref["micro avg"]["recall"]) <= 1e-12
    assert abs(ours["macro_f1"] - ref["macro avg"]["f1-score"]) <= 1e-12
    for type_ in ref:
        if type_ not in ("micro avg", "macro avg", "weighted avg"):
            assert abs(ours["report"][type_]["f1"] - ref[type_]["f1-score"]) <= 1e-12, type_
            assert ours["report"][type_]["support"] == ref[type_]["support"]
    flat_true, flat_pred = [t for s in y_true for t in s], [t for s in y_pred for t in s]
    assert abs(ours["accuracy"] - accuracy_score(flat_true, flat_pred)) <= 1e-12
    assert abs(ours["loss"] - loss_sum / n) <= 1e-6  # fp32 losses, summed in a different grouping
    assert ours["sentences"] == len(dev)


def test_evaluate_ner_needs_word_ids(minilm_dir, shared_data):
    labels = ner_labels(wnut(shared_data, n=50))
    collate = make_token_classification_collate(load_tokenizer(minilm_dir), labels)
    with pytest.raises(ValueError, match="keep_words=True"):
        evaluate_ner(torch.nn.Linear(1, 1), [collate(wnut(shared_data, n=2))], CPU, labels.id2label)


# --- the whole run, on synthetic data ---------------------------------------------------------------------

PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "mary ann", "john paul"]
CITIES = ["paris", "london", "berlin", "rome", "madrid", "new york", "los angeles", "oslo"]
FRAMES = ["i met {p} in {c} .", "{p} lives in {c}", "yesterday {p} flew to {c} !", "{c} is where {p} works ."]


def synthetic_conll(path, seed: int, n: int) -> None:
    g = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n):
        frame = FRAMES[int(torch.randint(len(FRAMES), (1,), generator=g))]
        person = PEOPLE[int(torch.randint(len(PEOPLE), (1,), generator=g))]
        city = CITIES[int(torch.randint(len(CITIES), (1,), generator=g))]
        for word in frame.split():
            if word in ("{p}", "{c}"):
                type_, name = ("person", person) if word == "{p}" else ("location", city)
                for k, part in enumerate(name.split()):
                    lines.append(f"{part}\t{'B' if k == 0 else 'I'}-{type_}")
            else:
                lines.append(f"{word}\tO")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, minilm_dir):
    """A small random BERT with MiniLM's vocabulary: fast enough to fine-tune in a test."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    transformers.BertModel(tiny_config(vocab_size=30522, hidden_size=32, num_attention_heads=2,
                                       max_position_embeddings=64)).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json"):
        (folder / name).write_bytes((minilm_dir / name).read_bytes())
    return folder


def test_finetune_ner_learns_and_saves_a_loadable_run(tmp_path, tiny_checkpoint):
    train, dev = tmp_path / "train.conll", tmp_path / "dev.conll"
    synthetic_conll(train, seed=1, n=160)
    synthetic_conll(dev, seed=2, n=40)
    out = tmp_path / "run"
    result = finetune_ner(tiny_checkpoint, train, dev, out, epochs=4, batch_size=16, max_length=32, lr=3e-3,
                          warmup_ratio=0.1, seed=0, device="cpu", progress=False)
    json.dumps(result)  # the CLI prints it as one JSON line
    assert result["labels"] == ["O", "B-location", "B-person", "I-location", "I-person"]
    assert result["dev_f1_before"] < 0.2
    assert result["best_dev_f1"] > 0.8, result  # the frames are easy: a working loop learns them
    assert (out / "best" / "model.safetensors").is_file()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["event"] == "eval"] == [0, 1, 2, 3, 4]

    # the run directory loads in transformers with the label names, and gives the same logits
    ref = transformers.AutoModelForTokenClassification.from_pretrained(out)
    assert ref.config.id2label == dict(enumerate(result["labels"]))
    ours = BertForTokenClassification.from_pretrained(out)
    labels = LabelMap(result["labels"])
    batch = make_token_classification_collate(load_tokenizer(out), labels)(read_ner(dev)[:8])
    with torch.no_grad():
        assert (ours(**batch).logits - ref(**batch).logits).abs().max().item() <= 1e-5  # fp32 activations
    text = "Yesterday Mary Ann flew to New York!"
    entities = predict_entities(ours, load_tokenizer(out), text, labels.id2label)
    assert {(e["type"], e["text"]) for e in entities} <= {("person", "Mary Ann"), ("location", "New York")}


# --- bad input --------------------------------------------------------------------------------------------


def test_bad_conll_files_name_file_and_line(tmp_path, tiny_checkpoint):
    good = tmp_path / "good.conll"
    good.write_text("Paris\tB-location\nis\tO\n\nBob\tB-person\n", encoding="utf-8")
    cases = {
        "missing_tag.conll": ("Paris\tB-location\n\nis\n", r"missing_tag\.conll:3: expected 'token<TAB>tag'"),
        "not_bio.conll": ("-DOCSTART-\tO\n\nParis\tB-location\n\n\nBob\tPERSON\n",
                          r"not_bio\.conll:6: tag 'PERSON' is not a BIO tag"),
        "unseen.conll": ("Paris\tB-location\n\t\nBob\tB-person\nSmith\tI-person\n",
                         r"unseen\.conll:4: tag 'I-person' does not occur in the training data"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        for train, dev in ((path, good), (good, path)):
            if name == "unseen.conll" and train == path:
                continue  # unseen only makes sense as the dev file
            with pytest.raises(DataError, match=message):
                finetune_ner(tiny_checkpoint, train, dev, tmp_path / "run", device="cpu", progress=False)


def test_collate_errors(minilm_dir):
    tokenizer = load_tokenizer(minilm_dir)
    labels = LabelMap(["O", "B-x"])
    with pytest.raises(ValueError, match="2 words but 1 tags"):
        make_token_classification_collate(tokenizer, labels)([(["a", "b"], ["O"])])
    with pytest.raises(ValueError, match="max_length must be at least 3"):
        make_token_classification_collate(tokenizer, labels, max_length=2)
    with pytest.raises(DataError, match="label 'I-y' is not one of the 2 labels"):
        make_token_classification_collate(tokenizer, labels)([(["a"], ["I-y"])])
    assert IGNORE_INDEX == -100
