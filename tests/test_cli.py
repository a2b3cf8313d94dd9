"""`minift finetune / evaluate / predict` end to end on a tiny BERT, and the CLI's error messages.

The tiny checkpoint is written by transformers (random weights, a vocabulary made here), so the test
also covers: reading a transformers checkpoint, saving the run in the public layout, and transformers
loading the run directory with the label names and the same outputs.
"""

import json
import subprocess
import sys

import pytest
import torch
import transformers
from tests_support import write_tiny_bert
from tests_support import write_tiny_dataset as write_dataset

from minift.cli import main
from minift.models import BertForSequenceClassification
from minift.tokenizer import WordPieceTokenizer

transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def run(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, (json.loads(lines[-1]) if lines else None), err


@pytest.fixture(scope="module")
def finetuned(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    write_dataset(root / "train.tsv", 96, 0)
    write_dataset(root / "dev.tsv", 32, 1)
    code = main(["finetune", "--model", str(tiny_model), "--train", str(root / "train.tsv"), "--dev",
                 str(root / "dev.tsv"), "--out", str(root / "out"), "--epochs", "10", "--batch-size", "16",
                 "--lr", "3e-3", "--warmup-ratio", "0", "--quiet", "--device", "cpu"])
    assert code == 0
    return root


def test_finetune_learns_and_saves_the_public_layout(finetuned, capsys):
    out = finetuned / "out"
    for name in ("config.json", "model.safetensors", "vocab.txt", "metrics.jsonl", "best/model.safetensors"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["architectures"] == ["BertForSequenceClassification"]
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["event"] == "eval"]
    assert [e["epoch"] for e in evals] == list(range(11))
    # the task is one keyword away: ten epochs must take a random head well above chance
    assert evals[-1]["accuracy"] >= 0.9 > evals[0]["accuracy"]


def test_transformers_loads_the_run_with_same_outputs_and_names(finetuned):
    out = finetuned / "out"
    ours = BertForSequenceClassification.from_pretrained(out)
    ref = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    assert ref.config.id2label == {0: "negative", 1: "positive"}
    tok = WordPieceTokenizer.from_pretrained(out)
    ref_tok = transformers.BertTokenizer.from_pretrained(out)
    texts = ["the film was superb", "really awful food and rude service", "a book"]
    batch = tok(texts, return_tensors="pt")
    assert batch["input_ids"].tolist() == ref_tok(texts, padding=True, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        diff = (ours(**batch).logits - ref(**batch).logits).abs().max().item()
    assert diff <= 1e-5  # fp32 activations


def test_evaluate_and_predict(finetuned, capsys):
    out = finetuned / "out"
    code, result, _ = run(capsys, "evaluate", "--model", out, "--data", finetuned / "dev.tsv", "--device", "cpu")
    assert code == 0
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert result["accuracy"] == pytest.approx(last["accuracy"], abs=1e-12)
    assert result["examples"] == 32
    code, result, _ = run(capsys, "predict", "--model", out, "the food was great", "boring and dull")
    assert code == 0
    assert [p["label"] for p in result["predictions"]] == ["positive", "negative"]


@pytest.mark.parametrize("content,message", [
    ("text\tlabel\nfine film\n", "train.tsv:2"),                   # a row without a label
    ("text\tlabel\n", "train.tsv"),                                # an empty dataset
    ("words\tlabel\nfine\tpositive\n", "text"),                    # no text column
])
def test_bad_training_file_gets_one_clear_message(tiny_model, tmp_path, capsys, content, message):
    (tmp_path / "train.tsv").write_text(content, encoding="utf-8")
    code, _, err = run(capsys, "finetune", "--model", tiny_model, "--train", tmp_path / "train.tsv",
                       "--out", tmp_path / "out", "--quiet")
    assert code == 1
    assert "error" in err and message in err and "Traceback" not in err


def test_dev_label_unknown_to_training_is_named(tiny_model, tmp_path, capsys):
    write_dataset(tmp_path / "train.tsv", 8, 0)
    (tmp_path / "dev.tsv").write_text("text\tlabel\nsuperb\tneutral\n", encoding="utf-8")
    code, _, err = run(capsys, "finetune", "--model", tiny_model, "--train", tmp_path / "train.tsv",
                       "--dev", tmp_path / "dev.tsv", "--out", tmp_path / "out", "--quiet")
    assert code == 1 and "dev.tsv:2" in err and "neutral" in err


def test_missing_inputs_and_bad_flags(tiny_model, tmp_path, capsys):
    write_dataset(tmp_path / "train.tsv", 8, 0)
    code, _, err = run(capsys, "finetune", "--model", tiny_model, "--train", tmp_path / "nope.tsv",
                       "--out", tmp_path / "out")
    assert code == 1 and "nope.tsv" in err
    code, _, err = run(capsys, "finetune", "--model", tmp_path / "no-model", "--train", tmp_path / "train.tsv",
                       "--out", tmp_path / "out")
    assert code == 1 and "no-model" in err
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "finetune", "--model", tiny_model, "--train", tmp_path / "train.tsv",
                       "--out", tmp_path / "file" / "out")
    assert code == 1 and "not a directory" in err
    code, _, err = run(capsys, "finetune", "--model", tiny_model, "--train", tmp_path / "train.tsv",
                       "--lr", "0", "--out", tmp_path / "out")
    assert code == 1 and "--lr" in err


def test_unknown_model_type_is_named(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    write_dataset(tmp_path / "train.tsv", 8, 0)
    code, _, err = run(capsys, "finetune", "--model", tmp_path / "m", "--train", tmp_path / "train.tsv",
                       "--out", tmp_path / "out")
    assert code == 1 and "t5" in err and "config.json" in err


def test_help_lists_the_contract_flags():
    out = subprocess.run([sys.executable, "-m", "minift", "finetune", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ["--task", "--model", "--train", "--dev", "--out", "--epochs", "--max-steps", "--batch-size",
                 "--max-length", "--lr", "--seed", "--save-every", "--resume"]:
        assert flag in out
    out = subprocess.run([sys.executable, "-m", "minift", "pretrain", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ["--arch", "--size", "--text", "--tokenizer", "--out", "--max-steps", "--batch-size", "--block-size",
                 "--seed", "--save-every", "--resume", "--quiet", "--precision", "--grad-accum", "--patience",
                 "--lora-r"]:
        assert flag in out


def test_pretrain_generate_and_causal_lm_finetune_commands(shared_data, tmp_path, capsys):
    """`minift pretrain` -> `minift generate` -> `minift finetune --task causal-lm`, through the CLI."""
    text = tmp_path / "text.txt"
    lines = (shared_data / "text" / "tinystories_sample.txt").read_text(encoding="utf-8").splitlines()
    text.write_text("\n".join(lines * 3) + "\n", encoding="utf-8")
    code, result, err = run(capsys, "pretrain", "--arch", "gpt2", "--size", "nano", "--text", text, "--out",
                            tmp_path / "lm", "--tokenizer", shared_data / "gpt2", "--max-steps", "4",
                            "--block-size", "32", "--quiet", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "lm" / "model.safetensors").is_file() and (tmp_path / "lm" / "vocab.json").is_file()
    code, result, err = run(capsys, "generate", "--model", tmp_path / "lm", "Once upon a time",
                            "--max-new-tokens", "5", "--device", "cpu")
    assert code == 0, err
    assert result["text"].startswith("Once upon a time") and result["new_tokens"] == 5
    code, result, err = run(capsys, "finetune", "--task", "causal-lm", "--model", tmp_path / "lm", "--train", text,
                            "--dev", text, "--out", tmp_path / "ft", "--max-steps", "3", "--max-length", "32",
                            "--batch-size", "4", "--lr", "1e-3", "--quiet", "--device", "cpu")
    assert code == 0, err
    assert result["dev_perplexity"] < result["dev_perplexity_before"]


def test_ner_finetune_and_predict_commands(tiny_model, tmp_path, capsys):
    # a word of the tiny vocabulary stands in for a name: the tagger must learn to mark it
    sentences = [[("the", "O"), ("film", "O"), ("great", "B-person"), ("was", "O")]] * 24
    conll = "\n\n".join("\n".join(f"{w}\t{t}" for w, t in s) for s in sentences) + "\n"
    (tmp_path / "train.conll").write_text(conll, encoding="utf-8")
    code, result, err = run(capsys, "finetune", "--task", "ner", "--model", tiny_model, "--train",
                            tmp_path / "train.conll", "--dev", tmp_path / "train.conll", "--out", tmp_path / "ner",
                            "--epochs", "6", "--batch-size", "8", "--lr", "5e-3", "--warmup-ratio", "0",
                            "--quiet", "--device", "cpu")
    assert code == 0, err
    config = json.loads((tmp_path / "ner" / "config.json").read_text())
    assert set(config["id2label"].values()) == {"O", "B-person"}
    code, result, err = run(capsys, "predict", "--task", "ner", "--model", tmp_path / "ner", "the film great was")
    assert code == 0, err
    assert result["entities"][0] == [{"type": "person", "text": "great", "start": 9, "end": 14}]
