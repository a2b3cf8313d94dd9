"""minift/tokenizer/roberta.py against the `tokenizers` package and transformers' RobertaTokenizer.

The tokenizer is built from GPT-2's vocabulary and merges (../shared/data/gpt2) laid out as RoBERTa's
files are: `<s> <pad> </s> <unk>` at ids 0-3, GPT-2's tokens after them, `<mask>` last (lstrip). Without
../shared/data, from a small byte-level BPE trained here by `tokenizers`. Ids must be identical.
"""

import json
import random
from pathlib import Path

import pytest
import transformers
from conftest import SHARED_DATA
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers import ByteLevelBPETokenizer as HFByteLevelBPE

from minift.tokenizer import RobertaTokenizer, load_tokenizer
from minift.tokenizer.bpe import read_merges

transformers.logging.set_verbosity_error()

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
TEXTS = [
    "Hello world!", "It was <mask>.", "It was<mask>.", "a <mask> b  <mask>", "<mask> first", "  spaces   inside ",
    "The movie was great, wasn't it? 12345", "café naïve — “quotes” 🙂", "</s> written <s> in text",
    "line\nbreaks\tand tabs", "", "<mask>", "x<pad>y",
]
CORPUS = ["the movie was great", "it was terrible and boring", "a wonderful film, truly great",
          "I didn't like it at all", "what a waste of time", "The acting was superb."] * 20


def roberta_files(folder: Path) -> tuple[dict, list]:
    """vocab.json, merges.txt and tokenizer_config.json of a RoBERTa tokenizer in ``folder``."""
    gpt2 = SHARED_DATA / "gpt2"
    if (gpt2 / "vocab.json").is_file():
        base = json.loads((gpt2 / "vocab.json").read_text(encoding="utf-8"))
        merges, _ = read_merges(gpt2 / "merges.txt")
    else:  # a small vocabulary of ours
        trained = HFByteLevelBPE()
        trained.train_from_iterator(CORPUS, vocab_size=400, min_frequency=2, show_progress=False)
        data = json.loads(trained._tokenizer.to_str())
        base = data["model"]["vocab"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    tokens = sorted(base, key=base.get)
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    vocab["<mask>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    entry = lambda t, lstrip=False: {"content": t, "lstrip": lstrip, "normalized": False, "rstrip": False,
                                     "single_word": False, "special": True}
    config = {"tokenizer_class": "RobertaTokenizer", "model_max_length": 512, "add_prefix_space": False,
              "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
              "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
              "added_tokens_decoder": {**{str(i): entry(t) for i, t in enumerate(SPECIALS)},
                                       str(vocab["<mask>"]): entry("<mask>", lstrip=True)}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return vocab, merges


def reference(vocab: dict, merges: list) -> Tokenizer:
    """RoBERTa's tokenizer as the `tokenizers` package builds it (transformers' RobertaTokenizerFast)."""
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("</s>", vocab["</s>"]), ("<s>", vocab["<s>"]),
                                                      add_prefix_space=False)
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS]
                           + [AddedToken("<mask>", lstrip=True, special=True)])
    return tok


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roberta-tokenizer")
    vocab, merges = roberta_files(folder)
    return folder, reference(vocab, merges)


def random_texts(seed: int, n: int = 60) -> list[str]:
    rng = random.Random(seed)
    pieces = ["<mask>", " <mask>", "  ", " the", "great", "!", "é", "🙂", "\n", "</s>", " 42", "don't", "<s>"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 9))) for _ in range(n)]


def test_load_tokenizer_returns_roberta_for_a_roberta_folder(files):
    folder, _ = files
    tok = load_tokenizer(folder)
    assert isinstance(tok, RobertaTokenizer)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == tok.vocab_size - 1
    ids = tok.encode("Hello world")
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


@pytest.mark.parametrize("seed", [0, 1])
def test_ids_identical_to_tokenizers(files, seed):
    folder, ref = files
    ours = load_tokenizer(folder)
    for text in TEXTS + random_texts(seed):
        assert ours.encode(text) == ref.encode(text).ids, repr(text)
        assert ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False).ids
    for a, b in zip(TEXTS, reversed(TEXTS)):  # pairs: <s> A </s></s> B </s>
        assert ours.encode(a, b) == ref.encode(a, b).ids, (a, b)


def test_ids_identical_to_transformers(files):
    folder, _ = files
    ours = load_tokenizer(folder)
    for cls in (transformers.RobertaTokenizer, transformers.AutoTokenizer):
        hf = cls.from_pretrained(folder)
        for text in TEXTS + random_texts(2, 20):
            assert ours.encode(text) == hf(text)["input_ids"], (cls.__name__, text)
        batch, hf_batch = ours(TEXTS[:4], TEXTS[4:8]), hf(TEXTS[:4], TEXTS[4:8], padding=True, return_tensors="pt")
        assert set(batch) == {"input_ids", "attention_mask"}  # RoBERTa is given no token_type_ids
        assert batch["input_ids"].tolist() == hf_batch["input_ids"].tolist()
        assert batch["attention_mask"].tolist() == hf_batch["attention_mask"].tolist()


def test_mask_takes_the_space_on_its_left(files):
    tok = load_tokenizer(files[0])
    assert tok.encode("It was <mask>.") == tok.encode("It was<mask>.")
    assert tok.convert_ids_to_tokens(tok.encode("It was <mask>.", add_special_tokens=False))[-2:] == ["<mask>", "."]


def test_save_round_trip_and_transformers_loads_it(files, tmp_path):
    folder, ref = files
    tok = load_tokenizer(folder)
    tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "RobertaTokenizer"
    again = load_tokenizer(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert again.encode(text) == tok.encode(text) == hf(text)["input_ids"] == ref.encode(text).ids
    assert again.decode(again.encode("It was <mask>."), skip_special_tokens=True) == "It was."
    assert again.decode(again.encode("It was great.")) == "<s>It was great.</s>"


def test_model_max_length_from_config_skips_the_padding_rows(files, tmp_path):
    folder, _ = files
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta", "max_position_embeddings": 514,
                                                      "pad_token_id": 1}))
    tok = load_tokenizer(tmp_path)  # no tokenizer_config.json: recognised by config.json
    assert isinstance(tok, RobertaTokenizer) and tok.model_max_length == 512
    assert len(tok.encode("word " * 600)) == 512
