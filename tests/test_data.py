"""minift.data: readers (every format and every error), the label map, collation and the seeded loader.

The readers are checked on files written here (the expected examples are the rows written) and on
the public minBERT and WNUT files against the line and label counts of ../shared/data/MANIFEST.md.
Collation is checked against a tiny fake tokenizer and, on real data, against per-example encodings
of the `tokenizers` package with the real MiniLM vocabulary.
"""

import ast
import json
import random
import re
from collections import Counter

import pytest
import torch

from minift.data import (
    ClassificationCollate,
    DataError,
    Example,
    LabelMap,
    demo_path,
    make_classification_collate,
    make_loader,
    read_classification,
    read_conll,
)


def write(tmp_path, name: str, text: str, encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


ROWS = [("a fine film", "positive"), ("dull , slow", "negative"), ("ok", "3")]


# --- each format ------------------------------------------------------------------------------------


def test_tsv(tmp_path):
    body = "id\ttext\tlabel\r\n" + "".join(f"{i}\t{t}\t{lab}\r\n" for i, (t, lab) in enumerate(ROWS)) + "\n"
    path = write(tmp_path, "d.tsv", "\ufeff" + body)  # Excel-style byte-order mark and CRLF
    assert read_classification(path) == [Example(t, lab, None, f"{path}:{i + 2}") for i, (t, lab) in
                                         enumerate(ROWS)]


def test_csv_with_quoting(tmp_path):
    texts = ['says "hello", then leaves', "two\nlines", "plain"]
    body = "label,text\n" + "".join(f'{lab},"{t.replace(chr(34), 2 * chr(34))}"\n'
                                    for lab, t in zip(["1", "0", "1"], texts))
    path = write(tmp_path, "d.csv", body)
    # the multi-line record starts on line 3, so the record after it starts on line 5
    assert read_classification(path) == [Example(texts[0], "1", None, f"{path}:2"),
                                         Example(texts[1], "0", None, f"{path}:3"),
                                         Example(texts[2], "1", None, f"{path}:5")]


def test_jsonl_and_pairs(tmp_path):
    records = [{"text": "a man sleeps", "text_pair": "a person rests", "label": "entailment"},
               {"text": "a dog", "text_pair": "a cat", "label": 2}]  # an integer label becomes "2"
    path = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\n")
    assert read_classification(path) == [
        Example(r["text"], str(r["label"]), r["text_pair"], f"{path}:{i + 1}") for i, r in enumerate(records)]


def test_tsv_pairs(tmp_path):
    path = write(tmp_path, "p.tsv", "text\ttext_pair\tlabel\nq1\ta1\tyes\nq2\ta2\tno\n")
    assert [(e.text, e.text_pair, e.label) for e in read_classification(path)] == [("q1", "a1", "yes"),
                                                                                   ("q2", "a2", "no")]


def test_minbert_txt(tmp_path):
    path = write(tmp_path, "d.txt", "".join(f"{lab} ||| {t}\n" for t, lab in ROWS))
    assert read_classification(path) == [Example(t, lab, None, f"{path}:{i + 1}") for i, (t, lab) in
                                         enumerate(ROWS)]


def manifest(shared_data) -> dict[str, tuple[int, dict]]:
    """file -> (lines, label counts) from the table of MANIFEST.md."""
    rows = {}
    for line in (shared_data / "MANIFEST.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("|") and line.rstrip().endswith("} |"):
            # | file | bytes | lines | format (may itself contain "|||") | {label: count} |
            cells = [c.strip() for c in line.strip("| ").split("|")]
            rows[cells[0]] = (int(cells[2]), ast.literal_eval(line[line.rindex("{"):line.rindex("}") + 1]))
    return rows


@pytest.mark.parametrize("name", ["sst-train", "sst-dev", "sst-test", "cfimdb-train", "cfimdb-dev", "cfimdb-test"])
def test_minbert_files_match_the_manifest(shared_data, name):
    lines, labels = manifest(shared_data)[f"minbert/{name}.txt"]
    examples = read_classification(shared_data / "minbert" / f"{name}.txt")
    assert len(examples) == lines  # one example per line, e.g. 8544 for sst-train
    assert Counter(e.label for e in examples) == labels
    assert LabelMap.from_labels(e.label for e in examples).names == sorted(labels, key=int)


@pytest.mark.parametrize("name", ["train", "dev"])
def test_wnut_matches_the_manifest(shared_data, name):
    _, tags = manifest(shared_data)[f"wnut17/{name}.conll"]
    sentences = read_conll(shared_data / "wnut17" / f"{name}.conll")
    assert Counter(t for _, sentence_tags in sentences for t in sentence_tags) == tags
    assert all(len(tokens) == len(tags) > 0 for tokens, tags in sentences)


def test_conll(tmp_path):
    text = ("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
            "Peter NNP B-NP B-PER\n")  # CoNLL-2003: four space-separated columns, the tag last
    assert read_conll(write(tmp_path, "a.conll", text)) == [(["EU", "rejects"], ["B-ORG", "O"]),
                                                            (["Peter"], ["B-PER"])]
    text = "New York\tB-LOC\n\t\nhi\tO"  # tab-separated: a token may hold a space; "\t" ends a sentence
    assert read_conll(write(tmp_path, "b.conll", text)) == [(["New York"], ["B-LOC"]), (["hi"], ["O"])]


# --- errors name the file and the line ----------------------------------------------------------------


@pytest.mark.parametrize("name, text, line, message", [
    ("d.tsv", "text\tlabel\nfine\tpos\nno label here\t\n", 3, "missing label"),
    ("d.tsv", "text\tlabel\n\tpos\n", 2, "empty text"),
    ("d.tsv", "text\tlabel\nfine\tpos\ttoo many\n", 2, "expected 2 tab-separated columns"),
    ("d.tsv", "text\tlabel\t\nfine\tpos\n", 2, r"expected 3 tab-separated columns as in the header \['text', "
     r"'label', ''\], found 2"),
    ("d.tsv", "sentence\tlabel\nfine\tpos\n", 1, "has no column 'text'"),
    ("d.tsv", "text\ttext_pair\tlabel\nq\t \tyes\n", 2, "empty text_pair"),
    ("d.csv", "text,label\nfine,pos\nshort\n", 3, "expected 2 comma-separated columns"),
    ("d.csv", 'text,label\n"two\nlines",pos\n"open quote,pos\n', 4, "malformed CSV"),
    ("d.csv", "text,text,label\n", 1, "more than once"),
    ("d.jsonl", '{"text": "ok", "label": "a"}\n{"text": "ok" "label": "a"}\n', 2, "bad JSON"),
    ("d.jsonl", '["ok", "a"]\n', 1, "expected a JSON object"),
    ("d.jsonl", '{"text": "ok"}\n', 1, "no 'label' key"),
    ("d.jsonl", '{"text": null, "label": "a"}\n', 1, "text must be a string, found NoneType"),
    ("d.jsonl", '{"text": "ok", "label": ["a"]}\n', 1, "label must be a string or an integer, found list"),
    ("d.txt", "1 ||| fine\n\n0 | not the separator\n", 3, "expected 'label ||| text'"),
    ("d.txt", " ||| no label\n", 1, "missing label"),
    ("d.txt", "1 |||   \n", 1, "empty text"),
    ("d.conll", "EU\tB-ORG\nrejects\n", 2, "expected 'token<TAB>tag'"),
    ("d.conll", "EU B-ORG\nrejects VBZ O\n", 2, "expected 2 columns"),
    ("d.conll", "EU\t\n", 1, "expected 'token<TAB>tag'"),
])
def test_malformed_line_names_file_and_line(tmp_path, name, text, line, message):
    path = write(tmp_path, name, text)
    read = read_conll if name.endswith(".conll") else read_classification
    with pytest.raises(DataError, match=message) as err:
        read(path)
    assert str(err.value).startswith(f"{path}:{line}: ")


def test_file_level_errors(tmp_path):
    for name in ("e.tsv", "e.csv", "e.jsonl", "e.txt", "e.conll"):
        path = write(tmp_path, name, "\n \n")
        read = read_conll if name.endswith(".conll") else read_classification
        with pytest.raises(DataError, match=f"^{re.escape(str(path))}: no (examples|sentences) found"):
            read(path)
    with pytest.raises(DataError, match=r"unknown data format '\.parquet'; accepted: \.tsv, \.csv, \.jsonl, "
                                        r"\.txt"):
        read_classification(write(tmp_path, "d.parquet", "x"))
    path = write(tmp_path, "latin.tsv", "text\tlabel\ncaf\u00e9\tpos\n", encoding="latin-1")
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}:2: not valid UTF-8"):
        read_classification(path)


# --- the label map -------------------------------------------------------------------------------------


def test_label_map_order_and_round_trip():
    numeric = [str(i) for i in range(12)]
    assert LabelMap.from_labels(random.Random(0).sample(numeric, 12) * 2).names == numeric  # "2" < "10"
    assert LabelMap.from_labels(["pos", "neg", "neutral", "neg"]).names == ["neg", "neutral", "pos"]
    labels = LabelMap.from_labels(["b", "10", "a", "9"])
    assert labels.names == ["9", "10", "a", "b"]
    assert labels.id2label == {i: name for i, name in enumerate(labels.names)}
    assert labels.label2id == {name: i for i, name in enumerate(labels.names)}
    # config.json stores id2label with string keys; reading it back gives the same map
    assert LabelMap.from_config(json.loads(json.dumps(labels.id2label))) == labels
    assert LabelMap.from_config(labels.id2label) == labels


def test_label_map_errors(tmp_path):
    train = LabelMap.from_labels(["neg", "pos"])
    dev = read_classification(write(tmp_path, "dev.tsv", "text\tlabel\nfine\tpos\nmeh\tneutral\n"))
    where = re.escape(str(tmp_path / "dev.tsv"))
    with pytest.raises(DataError, match=rf"^{where}:3: label 'neutral' is not one of the 2 labels the model "
                                        r"knows: \['neg', 'pos'\]"):
        train.check(dev)
    with pytest.raises(DataError, match=r"class ids 0..1, found \[0, 2\]"):
        LabelMap.from_config({"0": "a", "2": "b"})
    with pytest.raises(DataError, match="duplicate labels"):
        LabelMap(["a", "a"])
    with pytest.raises(DataError, match="at least one label"):
        LabelMap.from_labels([])


def test_demo_sets():
    train, dev = read_classification(demo_path("train")), read_classification(demo_path("dev"))
    labels = LabelMap.from_labels(e.label for e in train)
    assert labels.names == ["negative", "positive"]
    labels.check(dev)
    with pytest.raises(ValueError, match="unknown demo split 'test'; available: train, dev"):
        demo_path("test")


# --- collation ---------------------------------------------------------------------------------------


class FakeTokenizer:
    """The minift.tokenizer call interface in a few lines: whitespace words, [CLS] A [SEP] B [SEP],
    right padding with id 0. It also returns a key the model does not take, which collate must drop."""

    CLS, SEP, PAD = 101, 102, 0

    def __init__(self):
        self.calls = []

    def encode(self, text, pair=None, max_length=None):
        ids = [self.CLS] + [1000 + len(w) for w in text.split()] + [self.SEP]
        types = [0] * len(ids)
        if pair is not None:
            second = [2000 + len(w) for w in pair.split()] + [self.SEP]
            ids, types = ids + second, types + [1] * len(second)
        return ids[:max_length], types[:max_length]

    def __call__(self, texts, text_pairs=None, *, max_length=None, padding="longest", truncation=True,
                 return_tensors="pt"):
        self.calls.append(dict(max_length=max_length, padding=padding, truncation=truncation,
                               return_tensors=return_tensors))
        pairs = text_pairs or [None] * len(texts)
        encoded = [self.encode(t, p, max_length) for t, p in zip(texts, pairs)]
        width = max(len(ids) for ids, _ in encoded)
        pad = lambda row, value: row + [value] * (width - len(row))  # noqa: E731
        return {"input_ids": torch.tensor([pad(ids, self.PAD) for ids, _ in encoded]),
                "token_type_ids": torch.tensor([pad(types, 0) for _, types in encoded]),
                "attention_mask": torch.tensor([pad([1] * len(ids), 0) for ids, _ in encoded]),
                "special_tokens_mask": torch.zeros(len(texts), width, dtype=torch.long)}


def examples_of(texts, labels, pairs=None):
    pairs = pairs or [None] * len(texts)
    return [Example(t, lab, p, f"mem.tsv:{i + 2}") for i, (t, lab, p) in enumerate(zip(texts, labels, pairs))]


def test_collate_pads_to_the_longest_in_the_batch():
    rng = random.Random(0)
    tokenizer, labels = FakeTokenizer(), LabelMap.from_labels(["neg", "pos", "neutral"])
    for _ in range(20):
        n = rng.randint(1, 6)
        texts = [" ".join("w" * rng.randint(1, 5) for _ in range(rng.randint(1, 9))) for _ in range(n)]
        gold = [rng.choice(labels.names) for _ in range(n)]
        batch = make_classification_collate(tokenizer, labels, max_length=8)(examples_of(texts, gold))
        assert sorted(batch) == ["attention_mask", "input_ids", "labels", "token_type_ids"]
        unpadded = [tokenizer.encode(t, max_length=8)[0] for t in texts]
        assert batch["input_ids"].shape == (n, max(map(len, unpadded)))  # (B, T): T of this batch only
        for row, ids, mask in zip(batch["input_ids"].tolist(), unpadded, batch["attention_mask"].tolist()):
            assert row == ids + [0] * (len(row) - len(ids))
            assert mask == [1] * len(ids) + [0] * (len(row) - len(ids))
        assert batch["labels"].dtype == torch.long
        assert batch["labels"].tolist() == [labels.label2id[g] for g in gold]
    assert tokenizer.calls[-1] == dict(max_length=8, padding="longest", truncation=True, return_tensors="pt")


def test_collate_pairs():
    tokenizer, labels = FakeTokenizer(), LabelMap.from_labels(["no", "yes"])
    texts, pairs = ["q one", "q"], ["a", "a b c"]
    batch = ClassificationCollate(tokenizer, labels)(examples_of(texts, ["yes", "no"], pairs))
    want = [tokenizer.encode(t, p) for t, p in zip(texts, pairs)]  # (ids, token types) per example
    width = max(len(ids) for ids, _ in want)
    assert batch["input_ids"].tolist() == [ids + [0] * (width - len(ids)) for ids, _ in want]
    assert batch["token_type_ids"].tolist() == [types + [0] * (width - len(types)) for _, types in want]
    assert 1 in batch["token_type_ids"][1].tolist()  # the second segment is really there


def test_collate_errors():
    tokenizer, labels = FakeTokenizer(), LabelMap.from_labels(["neg", "pos"])
    collate = make_classification_collate(tokenizer, labels)
    with pytest.raises(DataError, match=r"^mem.tsv:3: label 'meh' is not one of the 2 labels the model "
                                        r"knows: \['neg', 'pos'\]"):
        collate(examples_of(["a", "b"], ["pos", "meh"]))
    with pytest.raises(DataError, match="^mem.tsv:3: this example has no text_pair but mem.tsv:2 has a "
                                        "text_pair"):
        collate(examples_of(["a", "b"], ["pos", "neg"], ["x", None]))
    with pytest.raises(ValueError, match="empty batch"):
        collate([])

    def broken(texts, **kwargs):  # a tokenizer whose mask lost a row
        out = tokenizer(texts, **kwargs)
        return {**out, "attention_mask": out["attention_mask"][1:]}

    with pytest.raises(ValueError, match=r"tokenizer attention_mask has shape \(1, 3\) but input_ids has "
                                         r"shape \(2, 3\)"):
        make_classification_collate(broken, labels)(examples_of(["a", "b"], ["pos", "neg"]))


def test_collate_on_sst_with_the_real_vocabulary(shared_data, minilm_dir):
    """Dynamic padding on real data: every row is the reference's own encoding of that text (the
    `tokenizers` package with MiniLM's tokenizer.json), padded only to the longest row of its batch."""
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    reference.no_padding()
    reference.enable_truncation(32)

    def tokenizer(texts, text_pairs=None, *, max_length, padding, truncation, return_tensors):
        # stand-in with minift.tokenizer's interface: the reference encodings, padded to the longest
        rows = [e.ids for e in reference.encode_batch(texts)]
        width = max(map(len, rows))
        return {"input_ids": torch.tensor([r + [0] * (width - len(r)) for r in rows]),
                "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])}

    examples = read_classification(shared_data / "minbert" / "sst-dev.txt")[:200]
    labels = LabelMap.from_labels(e.label for e in examples)
    collate = make_classification_collate(tokenizer, labels, max_length=32)
    loader = make_loader(examples, collate, batch_size=16)
    seen = 0
    for batch in loader:
        chunk = examples[seen:seen + len(batch["labels"])]
        seen += len(chunk)
        want = [reference.encode(e.text).ids for e in chunk]
        assert batch["input_ids"].shape == (len(chunk), max(map(len, want)))
        assert batch["attention_mask"].sum(dim=1).tolist() == [len(ids) for ids in want]
        assert batch["labels"].tolist() == [int(e.label) for e in chunk]  # SST labels "0".."4" -> ids 0..4
    assert seen == len(examples)


# --- the seeded loader ---------------------------------------------------------------------------------


def order(loader) -> list[str]:
    return [text for batch in loader for text in batch]


def test_loader_order_depends_only_on_the_seed():
    examples = examples_of([f"text {i}" for i in range(50)], ["pos"] * 50)
    texts = lambda batch: [e.text for e in batch]  # noqa: E731 - a collate that keeps the order visible
    torch.manual_seed(1)
    first = make_loader(examples, texts, batch_size=8, shuffle=True, seed=7)
    epoch1, epoch2 = order(first), order(first)
    torch.manual_seed(2)
    torch.rand(100)  # other consumers of the global RNG (init, dropout) do not move the data order
    again = make_loader(examples, texts, batch_size=8, shuffle=True, seed=7)
    assert order(again) == epoch1 and order(again) == epoch2
    assert epoch1 != epoch2  # each epoch a new permutation
    assert sorted(epoch1) == sorted(e.text for e in examples)
    assert order(make_loader(examples, texts, batch_size=8, shuffle=True, seed=8)) != epoch1
    in_order = make_loader(examples, texts, batch_size=8)
    assert order(in_order) == [e.text for e in examples]
    assert [len(b) for b in in_order] == [8] * 6 + [2]


def test_loader_errors():
    with pytest.raises(ValueError, match="empty list of examples"):
        make_loader([], lambda b: b, batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        make_loader(examples_of(["a"], ["pos"]), lambda b: b, batch_size=0)
