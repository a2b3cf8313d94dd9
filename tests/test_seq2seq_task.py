"""`minift finetune --task seq2seq`: the pairs reader and its errors, the batches (teacher forcing as
transformers shifts labels), a fresh Transformer trained from a WordPiece vocabulary learnt on the pairs,
and that run's folder fine-tuned again as --model DIR."""

import json
import warnings

import pytest
import torch
from tests_support import FILLER, write_tiny_bert

from minift.cli import main
from minift.data import DataError
from minift.data.pairs import EncodedPair, Seq2SeqCollate, read_pairs
from minift.generation.seq2seq import shift_tokens_right
from minift.models import EncoderDecoderModel
from minift.models.transformer import Transformer
from minift.tokenizer import load_tokenizer
from minift.train.config import FinetuneConfig
from minift.train.finetune import finetune


def write_reversal(path, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rows = ["source\ttarget"]
    for _ in range(n):
        digits = [str(int(d)) for d in torch.randint(0, 10, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g)]
        rows.append(" ".join(digits) + "\t" + " ".join(reversed(digits)))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_reads_tsv_and_jsonl(tmp_path):
    (tmp_path / "a.tsv").write_text("id\tsource\ttarget\n1\tab c\tc ab\n\n2\tx\ty\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"source": "ab c", "target": "c ab"}\n{"source": "x", "target": "y"}\n')
    for name in ("a.tsv", "a.jsonl"):
        pairs = read_pairs(tmp_path / name)
        assert [(p.source, p.target) for p in pairs] == [("ab c", "c ab"), ("x", "y")]
    assert read_pairs(tmp_path / "a.tsv")[1].where.endswith("a.tsv:4")


@pytest.mark.parametrize("name, content, message", [
    ("b.tsv", "text\ttarget\nx\ty\n", r"b.tsv:1: header row \['text', 'target'\] has no column 'source'"),
    ("b.tsv", "source\ttarget\nx\ty\nx\n", r"b.tsv:3: 1 tab-separated fields, the header has 2"),
    ("b.tsv", "source\ttarget\nx\t \n", r"b.tsv:2: empty target"),
    ("b.jsonl", '{"source": "x"}\n', r"b.jsonl:1: expected an object with keys 'source' and 'target'"),
    ("b.jsonl", '{"source": "x", "target": 3}\n', r"b.jsonl:1: target must be a string, found int"),
    ("b.csv", "source,target\n", r"b.csv: unknown format '.csv'"),
])
def test_bad_files_name_the_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_pairs(tmp_path / name)


def test_batches_are_teacher_forcing_as_transformers_shifts_labels():
    collate = Seq2SeqCollate(pad_token_id=0, decoder_start_token_id=2)
    batch = collate([EncodedPair([2, 5, 6, 3], [6, 5, 3]), EncodedPair([2, 7, 3], [7, 3])])
    assert batch["labels"].tolist() == [[6, 5, 3], [7, 3, -100]]
    assert batch["decoder_input_ids"].tolist() == shift_tokens_right(batch["labels"], 0, 2).tolist()
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["input_ids"].tolist() == [[2, 5, 6, 3], [2, 7, 3, 0]]


def test_fresh_transformer_trains_and_its_run_is_a_model_folder(tmp_path, capsys):
    write_reversal(tmp_path / "train.tsv", 64, 0)
    write_reversal(tmp_path / "dev.tsv", 8, 1)
    result = finetune(FinetuneConfig(task="seq2seq", model="transformer:nano", train=tmp_path / "train.tsv",
                                     dev=tmp_path / "dev.tsv", out=tmp_path / "run", max_steps=12, batch_size=16,
                                     lr=3e-3, max_length=16, label_smoothing=0.1, progress=False))
    assert result["dev_loss"] < result["dev_loss_before"]  # it learns something in 12 steps
    assert 0 <= result["dev_exact_match"] <= 1 and result["dev_exact_match_before"] == 0  # random init writes nothing right
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    vocab = (tmp_path / "run" / "vocab.txt").read_text().split("\n")
    assert config["model_type"] == "transformer" and config["max_position_embeddings"] == 16
    assert [vocab[config[k]] for k in ("pad_token_id", "decoder_start_token_id", "eos_token_id")] == \
        ["[PAD]", "[CLS]", "[SEP]"]
    assert {str(d) for d in range(10)} <= set(vocab)  # the vocabulary learnt from the pairs
    model = Transformer.from_pretrained(tmp_path / "run")
    again = finetune(FinetuneConfig(task="seq2seq", model=str(tmp_path / "run"), train=tmp_path / "train.tsv",
                                    dev=tmp_path / "dev.tsv", out=tmp_path / "again", max_steps=1, batch_size=16,
                                    lr=1e-9, max_length=16, progress=False))
    assert again["dev_loss_before"] == pytest.approx(result["dev_loss"], abs=1e-6)  # the same model, reloaded
    assert model.config.d_model == 32

    # `minift generate` on the run: the prompt is the source; greedy and beam search, as generate() writes
    source = "3 1 4"
    ids = torch.tensor([load_tokenizer(tmp_path / "run").encode(source)])
    for beams in (1, 3):
        code = main(["generate", "--model", tmp_path / "run", source, "--num-beams", beams, "--max-new-tokens", 6])
        printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        expected = model.generate(ids, max_new_tokens=6, num_beams=beams)[0]
        assert code == 0 and printed["source"] == source and printed["new_tokens"] == expected.shape[0] - 1
        assert printed["text"] == load_tokenizer(tmp_path / "run").decode(expected.tolist(), skip_special_tokens=True)
    assert main(["generate", "--model", tmp_path / "run", source, "--stop", "x"]) != 0
    assert "--stop is not available for a sequence-to-sequence model" in capsys.readouterr().err


def test_errors_name_the_flag_file_and_line(tmp_path):
    (tmp_path / "long.tsv").write_text("source\ttarget\n1 2\t1 2 3 4 5 6\n", encoding="utf-8")
    run = {"task": "seq2seq", "train": tmp_path / "long.tsv", "out": tmp_path / "r", "max_steps": 1, "progress": False}
    with pytest.raises(DataError, match=r"long.tsv:2: the target is 7 tokens long .* longer than --max-length=6"):
        finetune(FinetuneConfig(model="transformer:nano", max_length=6, **run))
    with pytest.raises(ValueError, match="--model transformer:huge: unknown size 'huge'"):
        finetune(FinetuneConfig(model="transformer:huge", **run))
    with pytest.raises(ValueError, match="--freeze is not available for --task seq2seq"):
        finetune(FinetuneConfig(model="transformer:nano", freeze="embeddings", **run))
    with pytest.raises(ValueError, match="--dropout must be a probability"):
        finetune(FinetuneConfig(model="transformer:nano", dropout=1.5, **run))
    with pytest.raises(ValueError, match="--template is not used by --task seq2seq"):
        finetune(FinetuneConfig(model="transformer:nano", template="{text} {mask}", **run))


def test_a_warm_started_encoder_decoder_folder_trains_too(tmp_path):
    """--model DIR with model_type "encoder-decoder": BERT + BERT with new cross-attention."""
    bert = write_tiny_bert(tmp_path / "bert", dropout=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the new cross-attention weights are listed in a warning
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(bert, bert, decoder_start_token_id=2,
                                                                    pad_token_id=0, eos_token_id=3)
    model.save_pretrained(tmp_path / "pair")
    load_tokenizer(bert).save_pretrained(tmp_path / "pair")
    rows = ["source\ttarget"] + [f"{a} {b}\t{b} {a}" for a, b in zip(FILLER, FILLER[1:] + FILLER[:1])]
    (tmp_path / "swap.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = finetune(FinetuneConfig(task="seq2seq", model=str(tmp_path / "pair"), train=tmp_path / "swap.tsv",
                                     dev=tmp_path / "swap.tsv", out=tmp_path / "run", max_steps=2, batch_size=5,
                                     lr=1e-3, progress=False))
    assert result["model"] == str(tmp_path / "pair") and result["steps"] == 2
    assert result["dev_loss"] < result["dev_loss_before"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model_type"] == "encoder-decoder"
    assert isinstance(EncoderDecoderModel.from_pretrained(tmp_path / "run"), EncoderDecoderModel)
