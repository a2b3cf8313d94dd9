"""Prompt-based fine-tuning (minift/train/tasks/prompt_based.py, minift/data/prompts.py) and the few-shot
protocol (minift/train/few_shot.py).

Parity: on random checkpoints of BERT and RoBERTa (masked LM) and GPT-2 (causal LM), with their real
tokenizers, the label-word logits and the loss of `PromptBasedClassifier` equal those read from
transformers' MLM / LM heads at the mask (or last) position, for label ids found with transformers'
tokenizer, fp32, within 1e-5; the token ids of the prompts equal transformers' tokenizer's.
Then: every bad input of issue 16 is an error before training; a run end to end (evaluate, predict,
from_pretrained); the few-shot protocol.
"""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
import transformers
from test_roberta_tokenizer import roberta_files

from minift.cli import main
from minift.data import Example, LabelMap
from minift.data.prompts import Template, parse_verbalizer
from minift.train.config import FinetuneConfig
from minift.train.few_shot import mean_std, sample_per_label
from minift.train.finetune import finetune
from minift.train.tasks.prompt_based import PromptCollate, build_prompt_classifier

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["a gripping, beautifully acted film", "dull and far too long", "I wanted my two hours back.",
         "one of the best of the year", "not bad at all"]
LABELS = ["1", "0", "0", "1", "1"]
SMALL = {"hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 40}


def bert_folder(tmp_path, minilm_dir):
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (minilm_dir / name).is_file():
            shutil.copy(minilm_dir / name, tmp_path / name)
    torch.manual_seed(0)
    ref = transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=30522, max_position_embeddings=64, **SMALL))
    ref.save_pretrained(tmp_path)
    return ref.eval()


def roberta_folder(tmp_path):
    vocab, _ = roberta_files(tmp_path)
    torch.manual_seed(1)
    ref = transformers.RobertaForMaskedLM(transformers.RobertaConfig(vocab_size=len(vocab), max_position_embeddings=66,
                                                                     **SMALL))
    ref.save_pretrained(tmp_path)
    return ref.eval()


def gpt2_folder(tmp_path, shared_data):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(shared_data / "gpt2" / name, tmp_path / name)
    torch.manual_seed(2)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=24,
                                                               n_layer=2, n_head=2))
    ref.save_pretrained(tmp_path)
    return ref.eval()


@pytest.fixture(params=["bert", "roberta", "gpt2"])
def lm(request, tmp_path, minilm_dir):
    """(folder, transformers model, transformers tokenizer, causal) for one architecture."""
    if request.param == "bert":
        ref = bert_folder(tmp_path, minilm_dir)
    elif request.param == "roberta":
        ref = roberta_folder(tmp_path)
    else:
        ref = gpt2_folder(tmp_path, request.getfixturevalue("shared_data"))
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    return tmp_path, ref, tok, request.param == "gpt2"


def reference_label_ids(tok, words, byte_level: bool) -> list[int]:
    """transformers' ids of the label words: the word after a space for a byte-level BPE."""
    out = []
    for word in words:
        ids = tok.encode(" " + word if byte_level else word, add_special_tokens=False)
        assert len(ids) == 1, (word, ids)
        out.append(ids[0])
    return out


@pytest.mark.parametrize("pattern", ["{text} It was {mask}.", "Review: {text} Sentiment: {mask}"])
def test_label_word_scores_equal_transformers_heads(lm, pattern):
    folder, ref, tok, causal = lm
    template, verbalizer = Template(pattern), parse_verbalizer("0=terrible,1=great")
    model, tokenizer, _ = build_prompt_classifier(str(folder), template, verbalizer, attn_impl="eager")
    model.eval()
    labels = LabelMap(list(verbalizer))
    collate = PromptCollate(tokenizer, template, labels, verbalizer, causal=causal, max_length=64)
    examples = [Example(text=t, label=y) for t, y in zip(TEXTS, LABELS)]
    batch = collate(examples)
    # The prompts, tokenized by transformers, are the same ids (right padding, the same pad id).
    prompts = [collate.fit(e) for e in examples]
    if causal:
        tok.pad_token = tok.eos_token
        assert prompts[0] == "a gripping, beautifully acted film It was" or pattern != "{text} It was {mask}."
    hf = tok(prompts, padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == hf["input_ids"].tolist()
    ids = reference_label_ids(tok, verbalizer.values(), byte_level=ref.config.model_type != "bert")
    assert model.label_ids.tolist() == ids
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    ours = model(**inputs, labels=batch["labels"])
    with torch.no_grad():
        vocab_logits = ref(input_ids=hf["input_ids"], attention_mask=hf["attention_mask"]).logits  # (B, T, V)
    if causal:
        where = hf["attention_mask"].sum(1) - 1
    else:
        where = (hf["input_ids"] == tok.mask_token_id).int().argmax(1)
        assert (hf["input_ids"] == tok.mask_token_id).sum(1).tolist() == [1] * len(TEXTS)
    expected = vocab_logits[torch.arange(len(TEXTS)), where][:, ids]
    assert (ours.logits - expected).abs().max().item() <= 1e-5  # fp32 activations
    assert abs(ours.loss.item() - F.cross_entropy(expected, batch["labels"]).item()) <= 1e-5


def test_gradients_reach_the_whole_model_through_the_label_words(tmp_path):
    roberta_folder(tmp_path)
    model, tokenizer, _ = build_prompt_classifier(str(tmp_path), Template("{text} It was {mask}."),
                                                  parse_verbalizer("0=terrible,1=great"), attn_impl="eager")
    collate = PromptCollate(tokenizer, Template("{text} It was {mask}."), LabelMap(["0", "1"]),
                            {"0": "terrible", "1": "great"}, causal=False, max_length=64)
    model(**collate([Example(text=t, label=y) for t, y in zip(TEXTS, LABELS)])).loss.backward()
    names = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "roberta.encoder.layer.0.attention.self.query.weight" in names and "lm_head.dense.weight" in names
    # The wrapper's parameter names are the language model's: freezing, LoRA and saving see the LM.
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in model.lm.named_parameters()}


# ----------------------------------------------------------------------------------------------------
# Templates, verbalizers and bad input


def test_template_and_verbalizer_parsing():
    t = Template("{text} It was {mask}.")
    assert t.fill("Good {mask} braces {text} stay", "[MASK]") == "Good {mask} braces {text} stay It was [MASK]."
    assert t.prefix("Fine.") == "Fine. It was" and t.space_before_mask
    assert not Template("{text} It was:{mask}").space_before_mask
    assert parse_verbalizer(" 0 = terrible , 1=great") == {"0": "terrible", "1": "great"}


@pytest.mark.parametrize("change,message", [
    ({"template": "{text} It was great."}, r"has 0 \{mask\} slots"),
    ({"template": "It was {mask}."}, r"has 0 \{text\} slots"),
    ({"template": "{text} {text} {mask}"}, r"has 2 \{text\} slots"),
    ({"template": None}, "--task prompt-based needs --template"),
    ({"verbalizer": "0:terrible,1=great"}, "is not label=word"),
    ({"verbalizer": "0=terrible"}, "at least two labels"),
    ({"verbalizer": "0=bad,0=great"}, "given twice"),
    ({"seeds": "1,2"}, "--seeds is read by the few-shot protocol"),
    ({"shots": 4, "seed": 7}, "--seed 7 with --shots"),
    ({"shots": 4, "seeds": "1,x"}, "expected integers"),
    ({"task": "classification"}, "--template is not used by --task classification"),
])
def test_bad_flags_are_errors_before_any_work(tmp_path, change, message):
    cfg = {"task": "prompt-based", "model": "m", "train": tmp_path / "t.tsv", "out": tmp_path / "run",
           "template": "{text} It was {mask}.", "verbalizer": "0=terrible,1=great"}
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**{**cfg, **change}).check()
    assert not (tmp_path / "run").exists()


def write_data(path, rows):
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return path


@pytest.mark.parametrize("verbalizer,labels,message", [
    ("0=terrible,1=magnificently", ["0", "1"],
     r"the word 'magnificently' \(label '1'\) is 3 tokens for this tokenizer: \['Ġmagn', 'ific', 'ently'\]"),
    ("0=terrible,1=great", ["0", "2"], r"t.jsonl:2: label '2' is missing from --verbalizer"),
    ("0=great,1=great", ["0", "1"], "labels '0' and '1' have the same word"),
])
def test_bad_verbalizer_or_labels_before_training(tmp_path, shared_data, verbalizer, labels, message):
    roberta_folder(tmp_path / "model")
    train = write_data(tmp_path / "t.jsonl", [("good film", labels[0]), ("bad film", labels[1])])
    with pytest.raises(ValueError, match=message):
        finetune(FinetuneConfig(task="prompt-based", model=str(tmp_path / "model"), train=train,
                                out=tmp_path / "run", template="{text} It was {mask}.", verbalizer=verbalizer,
                                progress=False))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained


def test_causal_template_needs_the_text_first(tmp_path, shared_data):
    gpt2_folder(tmp_path, shared_data)
    with pytest.raises(ValueError, match=r"causal LM \(gpt2\) predicts the \{mask\} slot from the text before it"):
        build_prompt_classifier(str(tmp_path), Template("{mask}: {text}"), parse_verbalizer("0=bad,1=good"))


# ----------------------------------------------------------------------------------------------------
# Demonstrations, a whole run, the few-shot protocol


def test_demonstrations_one_per_label_never_the_example_itself(tmp_path):
    roberta_folder(tmp_path)
    template, verbalizer = Template("{text} It was {mask}."), {"0": "terrible", "1": "great"}
    _, tokenizer, _ = build_prompt_classifier(str(tmp_path), template, verbalizer)
    pool = [Example(text=t, label=y, source=f"f:{i}") for i, (t, y) in enumerate(zip(TEXTS, LABELS))]
    collate = PromptCollate(tokenizer, template, LabelMap(["0", "1"]), verbalizer, causal=False, max_length=64,
                            demonstrations=pool, seed=3)
    prompt = collate.fit(pool[0])
    assert prompt.startswith("a gripping, beautifully acted film It was <mask>. </s> ")
    assert prompt.count("It was terrible.") == 1 and prompt.count("It was great.") == 1
    assert "a gripping, beautifully acted film It was great." not in prompt
    assert collate.fit(pool[0]) == prompt  # the same every epoch
    # ... and wherever the files lie: the same data read from another folder, the same demonstrations
    moved = [Example(text=e.text, label=e.label, source=f"elsewhere/{e.source}") for e in pool]
    there = PromptCollate(tokenizer, template, LabelMap(["0", "1"]), verbalizer, causal=False, max_length=64,
                          demonstrations=moved, seed=3)
    assert [there.fit(e) for e in moved] == [collate.fit(e) for e in pool]
    short = PromptCollate(tokenizer, template, LabelMap(["0", "1"]), verbalizer, causal=False, max_length=14,
                          demonstrations=pool, seed=3)
    assert "<mask>" in short.fit(pool[0]) and len(tokenizer.encode(short.fit(pool[0]))) <= 14


def test_a_run_end_to_end_then_evaluate_predict_and_from_pretrained(tmp_path, capsys):
    roberta_folder(tmp_path / "model")
    rows = [(t, y) for t, y in zip(TEXTS, LABELS)] * 2
    train = write_data(tmp_path / "train.jsonl", rows)
    out = tmp_path / "run"
    code = main(["finetune", "--task", "prompt-based", "--model", str(tmp_path / "model"), "--train", str(train),
                 "--dev", str(train), "--template", "{text} It was {mask}.", "--verbalizer", "0=terrible,1=great",
                 "--max-steps", "2", "--batch-size", "4", "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["task"] == "prompt-based" and result["steps"] == 2 and "best_dev_accuracy" in result
    saved = json.loads((out / "prompt.json").read_text())
    assert saved["template"] == "{text} It was {mask}." and saved["lm_head"] == "masked-lm"
    assert (out / "best" / "prompt.json").is_file()
    assert main(["evaluate", "--model", str(out), "--data", str(train), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["examples"] == len(rows)
    assert main(["predict", "--model", str(out), "a wonderful film", "--device", "cpu"]) == 0
    predicted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert predicted["predictions"][0]["label"] in ("0", "1")
    # The run directory is a public masked-LM checkpoint: transformers loads it as one.
    assert json.loads((out / "config.json").read_text())["architectures"] == ["RobertaForMaskedLM"]
    transformers.RobertaForMaskedLM.from_pretrained(out)


def test_few_shot_protocol_samples_k_per_label_and_reports_mean_and_std(tmp_path):
    roberta_folder(tmp_path / "model")
    rows = [(f"{w} film number {i}", y) for i in range(6) for w, y in (("great", "1"), ("awful", "0"))]
    train = write_data(tmp_path / "train.jsonl", rows)
    result = finetune(FinetuneConfig(task="prompt-based", model=str(tmp_path / "model"), train=train, dev=train,
                                     test=train, shots=2, seeds="5,6", out=tmp_path / "fs", max_steps=1,
                                     batch_size=4, template="{text} It was {mask}.", verbalizer="0=terrible,1=great",
                                     progress=False, device="cpu"))
    assert result["seeds"] == [5, 6] and result["test_accuracy"]["n"] == 2
    assert [r["test"]["examples"] for r in result["runs"]] == [len(rows)] * 2
    sample = [json.loads(line) for line in (tmp_path / "fs" / "data" / "train-seed-5.jsonl").read_text().splitlines()]
    assert sorted(e["label"] for e in sample) == ["0", "0", "1", "1"]
    assert (tmp_path / "fs" / "seed-6" / "best" / "prompt.json").is_file()


def test_sample_per_label_and_mean_std():
    pool = [Example(text=str(i), label=str(i % 2)) for i in range(10)]
    a, b = sample_per_label(pool, 3, 13, "f"), sample_per_label(pool, 3, 13, "f")
    assert a == b and sorted(e.label for e in a) == ["0", "0", "0", "1", "1", "1"]
    assert sample_per_label(pool, 3, 21, "f") != a
    with pytest.raises(ValueError, match="label '0' has 5 examples, fewer than --shots 6"):
        sample_per_label(pool, 6, 13, "f")
    assert mean_std([0.5, 0.7]) == pytest.approx({"mean": 0.6, "std": 0.1414213562, "n": 2})
