"""GPT-2 as a sequence classifier through `minift finetune --task classification`, end to end.

The checkpoint is a tiny random GPT-2 written by transformers (a GPT2LMHeadModel, as `minift pretrain`
leaves one) with a byte-level vocabulary made here (256 byte symbols, no merges, <|endoftext|> = 256)
and no pad token. The run must: pad with the end-of-text id in both the tokenizer and the model's
config (transformers' convention), learn a keyword task, save a run directory that transformers loads
with the same logits, and give every sequence the same logits whether it is padded in a batch or not.
"""

import json

import pytest
import torch
import transformers
from tests_support import BAD, FILLER, GOOD

from minift.cli import main
from minift.data import LabelMap
from minift.models import GPT2ForSequenceClassification
from minift.tokenizer import load_tokenizer
from minift.tokenizer.bpe import bytes_to_unicode
from minift.train.tasks.classification import build_classifier

transformers.logging.set_verbosity_error()
EOS = 256  # the first id after the 256 byte symbols


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def write_tiny_gpt2(folder, **config):
    """A random GPT-2 LM saved by transformers, plus vocab.json / merges.txt; no pad token anywhere."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({ch: i for i, ch in enumerate(bytes_to_unicode().values())}),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    torch.manual_seed(0)
    settings = {"vocab_size": EOS + 1, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4,
                "bos_token_id": EOS, "eos_token_id": EOS, **config}
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**settings)).save_pretrained(folder)
    return folder


def write_keyword_data(path, n: int, seed: int) -> None:
    """`label ||| text` lines (the minBERT format): 1-4 filler words, then a sentiment word that decides
    the label (a few steps suffice for a 2-layer model reading bytes); the texts have different
    lengths, so every batch is padded."""
    gen = torch.Generator().manual_seed(seed)
    lines = []
    for i in range(n):
        positive = i % 2 == 0
        words = [FILLER[int(j)] for j in torch.randint(0, len(FILLER), (int(torch.randint(1, 5, (1,), generator=gen)),),
                                                       generator=gen)]
        words.append((GOOD if positive else BAD)[i % 6])
        lines.append(f"{int(positive)} ||| {' '.join(words)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt2-classify")
    write_tiny_gpt2(root / "gpt2")
    write_keyword_data(root / "train.txt", 96, 0)
    write_keyword_data(root / "dev.txt", 32, 1)
    code = main(["finetune", "--task", "classification", "--model", str(root / "gpt2"), "--train",
                 str(root / "train.txt"), "--dev", str(root / "dev.txt"), "--out", str(root / "out"), "--epochs", "6",
                 "--batch-size", "16", "--lr", "3e-3", "--warmup-ratio", "0", "--quiet", "--device", "cpu"])
    assert code == 0
    return root


def dev_texts(root) -> list[str]:
    return [line.split("|||", 1)[1].strip() for line in (root / "dev.txt").read_text().splitlines()]


def test_finetuning_lowers_the_loss_and_pads_with_eos(run):
    out = run / "out"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert [e["epoch"] for e in evals] == list(range(7))
    losses = [e["loss"] for e in evals]
    assert losses[-1] < 0.5 * losses[0]  # the random head starts near ln 2 = 0.69
    assert evals[-1]["accuracy"] >= 0.9 > evals[0]["accuracy"]  # one keyword decides the label
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    assert config["pad_token_id"] == config["eos_token_id"] == EOS
    assert config["id2label"] == {"0": "0", "1": "1"}
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["pad_token"] == "<|endoftext|>" and tokenizer_config["padding_side"] == "right"


def test_transformers_loads_the_run_with_the_same_logits(run):
    out = run / "out"
    texts = dev_texts(run)[:8]
    ours = GPT2ForSequenceClassification.from_pretrained(out)
    ref = transformers.GPT2ForSequenceClassification.from_pretrained(out).eval()
    assert ref.config.pad_token_id == EOS
    tokenizer = load_tokenizer(out)
    ref_tokenizer = transformers.GPT2Tokenizer.from_pretrained(out)
    batch = tokenizer(texts, return_tensors="pt")  # right-padded with <|endoftext|>
    ref_batch = ref_tokenizer(texts, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], ref_batch["input_ids"])
    assert torch.equal(batch["attention_mask"], ref_batch["attention_mask"])
    assert (batch["input_ids"] == EOS).any()  # the batch really is padded
    with torch.no_grad():
        diff = (ours(**batch).logits - ref(**batch).logits).abs().max().item()
    assert diff <= 1e-5  # fp32 activations, hidden 32: observed ~1e-7


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_padding_does_not_change_a_sequence_logits(run, impl):
    out = run / "out"
    model = GPT2ForSequenceClassification.from_pretrained(out, attn_impl=impl)
    ref = transformers.GPT2ForSequenceClassification.from_pretrained(out).eval()
    tokenizer = load_tokenizer(out)
    texts = dev_texts(run)[:8]
    with torch.no_grad():
        batched = model(**tokenizer(texts, return_tensors="pt")).logits  # (8, 2)
        for i, text in enumerate(texts):
            alone = tokenizer([text], return_tensors="pt")  # (1, T_i): no padding at all
            assert (model(**alone).logits[0] - batched[i]).abs().max() <= 1e-5  # fp32, reduction order only
            assert (ref(**alone).logits[0] - batched[i]).abs().max() <= 1e-5  # and transformers alone


def test_evaluate_and_predict_a_gpt2_run(run, capsys):
    out = run / "out"
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(run / "dev.txt"), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    last_eval = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert result["accuracy"] == last_eval["accuracy"]
    assert abs(result["loss"] - last_eval["loss"]) <= 1e-5  # same model, same batches; fp32
    assert main(["predict", "--model", str(out), "--device", "cpu", "the book was superb", "the service was awful"]) == 0
    predictions = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]
    assert [p["label"] for p in predictions] == ["1", "0"]


def test_pad_id_mismatch_and_missing_eos_are_clear_errors(tmp_path, capsys):
    labels = LabelMap.from_labels(["0", "1"])
    # A config that names a pad id the tokenizer does not pad with: the head would read padding.
    folder = write_tiny_gpt2(tmp_path / "pad0", pad_token_id=3)
    with pytest.raises(ValueError, match=r"pad0: the tokenizer's pad id is None \(end-of-text id 256\) but "
                                         r"config.json has pad_token_id 3"):
        build_classifier(str(folder), labels)
    # No pad id and no end-of-text id: nothing to pad with.
    folder = write_tiny_gpt2(tmp_path / "noeos", eos_token_id=None)
    with pytest.raises(ValueError, match=r"noeos/config.json: a gpt2 classifier pads with the end-of-text "
                                         r"token, but the config has pad_token_id None and eos_token_id None"):
        build_classifier(str(folder), labels)
    # Through the CLI: one line on stderr, exit code 1, no traceback.
    (tmp_path / "train.txt").write_text("1 ||| fun\n0 ||| dull\n", encoding="utf-8")
    code = main(["finetune", "--model", str(folder), "--train", str(tmp_path / "train.txt"), "--out",
                 str(tmp_path / "out"), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "minift finetune: error:" in err and "eos_token_id None" in err
    assert "Traceback" not in err


def test_ner_on_gpt2_is_refused_naming_what_fits(tmp_path, capsys):
    """GPT-2 has a token-classification head, but NER batches are BERT's [CLS] words [SEP] (a WordPiece
    template): `--task ner` on a GPT-2 checkpoint stops with the model types of the table that fit."""
    folder = write_tiny_gpt2(tmp_path / "gpt2")
    (tmp_path / "train.conll").write_text("the\tO\nfilm\tB-work\n", encoding="utf-8")
    for command in (["finetune", "--task", "ner", "--train", str(tmp_path / "train.conll"), "--out",
                     str(tmp_path / "out")], ["predict", "--task", "ner", "the film"]):
        assert main([*command, "--model", str(folder), "--quiet", "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert (f"{folder / 'config.json'}: model_type 'gpt2'; ner builds [CLS] words [SEP] inputs with a WordPiece "
                "tokenizer for a token-classification head, which minift has for model type(s) bert") in err
        assert "Traceback" not in err
