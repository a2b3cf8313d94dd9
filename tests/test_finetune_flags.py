"""`minift finetune` flags that act the same for every task: precision, early stopping, class weights,
label smoothing, freezing and LoRA, and --resume for ner and causal-lm (minift/train/finetune.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from tests_support import write_byte_bpe, write_tiny_bert, write_tiny_dataset

from minift.cli import main
from minift.io import JSONError
from minift.models import BertForSequenceClassification
from minift.train.config import FinetuneConfig, check_run_identity, run_identity
from minift.train.finetune import pretrain
from minift.train.rundir import RunDirectory
from minift.train.state import CHECKPOINTS, STATE


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("flags")
    model = write_tiny_bert(root / "tiny", dropout=0.1)
    write_tiny_dataset(root / "train.tsv", 48, seed=1)
    write_tiny_dataset(root / "dev.tsv", 16, seed=2)
    return root, model


def _run(capsys, root: Path, model: Path, out: str, *flags: str) -> dict:
    code = main(["finetune", "--model", str(model), "--train", str(root / "train.tsv"), "--dev",
                 str(root / "dev.tsv"), "--out", str(root / out), "--batch-size", "8", "--lr", "1e-3",
                 "--device", "cpu", "--quiet", *flags])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def _error(capsys, root: Path, model: Path, *flags: str) -> str:
    code = main(["finetune", "--model", str(model), "--train", str(root / "train.tsv"), "--dev",
                 str(root / "dev.tsv"), "--out", str(root / "err"), "--device", "cpu", "--quiet", *flags])
    assert code == 1
    return capsys.readouterr().err


def _diff(a: dict, b: dict, keys) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in keys)


def test_bf16_runs_and_fp16_on_cpu_is_refused_before_any_work(capsys, tiny):
    root, model = tiny
    result = _run(capsys, root, model, "bf16", "--precision", "bf16", "--max-steps", "3")
    assert result["steps"] == 3
    err = _error(capsys, root, model, "--precision", "fp16")
    assert "fp16 needs a CUDA device" in err
    assert not (root / "err" / "metrics.jsonl").exists()


def test_patience_stops_when_the_metric_stops_improving(capsys, tiny):
    root, model = tiny
    # lr 1e-12: the dev accuracy does not change, so no evaluation after the first is better than the best
    result = _run(capsys, root, model, "patience", "--epochs", "5", "--patience", "2", "--lr", "1e-12")
    events = [json.loads(line) for line in (root / "patience" / "metrics.jsonl").read_text().splitlines()]
    evals = [e["epoch"] for e in events if e["event"] == "eval"]
    assert result["stopped_early"] is True
    assert evals == [0, 1, 2, 3]  # best at epoch 1 (first after training), then 2 without improvement
    assert next(e for e in events if e["event"] == "early_stop")["best_epoch"] == 1
    assert "--patience needs --dev" in (
        main(["finetune", "--model", str(model), "--train", str(root / "train.tsv"), "--out",
              str(root / "x"), "--patience", "1", "--quiet"]) == 1 and capsys.readouterr().err)


def test_class_weights_and_label_smoothing_change_the_run(capsys, tiny):
    root, model = tiny
    plain = _run(capsys, root, model, "plain", "--max-steps", "3", "--seed", "5")
    weighted = _run(capsys, root, model, "weighted", "--max-steps", "3", "--seed", "5",
                    "--class-weights", "negative=1,positive=5")
    smooth = _run(capsys, root, model, "smooth", "--max-steps", "3", "--seed", "5", "--label-smoothing", "0.2")
    balanced = _run(capsys, root, model, "balanced", "--max-steps", "3", "--seed", "5", "--class-weights",
                    "balanced")
    a, b, c = (load_file(str(root / r / "model.safetensors")) for r in ("plain", "weighted", "smooth"))
    head = [k for k in a if k.startswith("classifier")]
    assert _diff(a, b, head) > 1e-6 and _diff(a, c, head) > 1e-6
    # balanced on a 50/50 training set: every weight is 1, so the run is the plain one (1e-6: same math,
    # computed by cross_entropy on the logits instead of inside the model)
    d = load_file(str(root / "balanced" / "model.safetensors"))
    assert _diff(a, d, a.keys()) <= 1e-6
    assert plain["steps"] == weighted["steps"] == smooth["steps"] == balanced["steps"] == 3
    assert "no weight for positive" in _error(capsys, root, model, "--class-weights", "negative=2")
    assert "--label-smoothing must be in [0, 1)" in _error(capsys, root, model, "--label-smoothing", "1.5")


@pytest.mark.parametrize("flags,weights,smoothing", [
    ({"class_weights": "negative=1,positive=5"}, {"negative": 1.0, "positive": 5.0}, 0.0),
    ({"class_weights": "positive=0.5,negative=3"}, {"negative": 3.0, "positive": 0.5}, 0.0),
    ({"label_smoothing": 0.2}, None, 0.2),
    ({"class_weights": "positive=2,negative=1", "label_smoothing": 0.1}, {"negative": 1.0, "positive": 2.0}, 0.1),
])
def test_class_weights_and_smoothing_are_torch_cross_entropy_on_the_same_batch(tiny, flags, weights, smoothing):
    """The loss the task trains on equals torch's F.cross_entropy(weight=, label_smoothing=) on the
    same logits, with each flag's weight at the id of its label (a swapped mapping fails here)."""
    from minift.train.distributed import Distributed
    from minift.train.tasks import classification

    root, model = tiny
    cfg = FinetuneConfig(task="classification", model=str(model), train=root / "train.tsv", dev=root / "dev.tsv",
                         out=root / "unused", batch_size=16, **flags)
    cfg.check()
    task = classification.build(cfg, torch.device("cpu"), Distributed())
    task.model.eval()  # no dropout: both forwards see the same logits
    batch = next(iter(task.train_loader))
    assert len(set(batch["labels"].tolist())) == 2  # both classes, so the weights' order matters
    loss = task.objective.loss(task.model, batch)
    logits = task.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    id2label = task.model.config.id2label
    weight = None if weights is None else torch.tensor([weights[id2label[i]] for i in range(len(id2label))])
    expected = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=weight, label_smoothing=smoothing)
    assert abs(loss.item() - expected.item()) <= 1e-6, (loss.item(), expected.item())


def test_a_flag_the_task_does_not_read_is_refused_before_any_work(capsys, tiny):
    """FinetuneConfig's field metadata names the tasks that read each flag: given to another task, the
    flag would be silently ignored, so it is an error, before any file is read or written."""
    root, model = tiny
    out = root / "not-written"
    ignored = "--label-all-subtokens is not used by --task classification; it applies to --task ner"
    assert main(["finetune", "--model", str(model), "--train", str(root / "train.tsv"), "--out", str(out),
                 "--quiet", "--label-all-subtokens"]) == 1
    assert ignored in capsys.readouterr().err
    ignored = "--class-weights is not used by --task causal-lm; it applies to --task classification/ner"
    assert main(["finetune", "--task", "causal-lm", "--model", str(model), "--train", str(root / "train.tsv"),
                 "--out", str(out), "--quiet", "--class-weights", "balanced"]) == 1
    assert ignored in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match=r"--block-size is not used by --task ner; it applies to minift pretrain"):
        FinetuneConfig(task="ner", train=root / "train.tsv", block_size=32).check()


def test_freeze_head_only_changes_only_the_head(capsys, tiny):
    root, model = tiny
    result = _run(capsys, root, model, "frozen", "--max-steps", "3", "--freeze", "head-only")
    start = load_file(str(model / "model.safetensors"))  # a BertModel: names without the "bert." prefix
    end = load_file(str(root / "frozen" / "model.safetensors"))
    assert all(torch.equal(end["bert." + k], v) for k, v in start.items())  # embeddings, blocks, pooler
    _run(capsys, root, model, "unfrozen", "--max-steps", "3")  # the same run without --freeze moves them
    plain = load_file(str(root / "unfrozen" / "model.safetensors"))
    assert any(not torch.equal(plain["bert." + k], v) for k, v in start.items())
    n_head = sum(end[k].numel() for k in end if k.startswith("classifier"))
    assert result["trainable_parameters"] == n_head


def test_lora_run_saves_a_merged_public_checkpoint_and_the_adapter(capsys, tiny):
    root, model = tiny
    result = _run(capsys, root, model, "lora", "--max-steps", "4", "--lora-r", "4", "--lora-alpha", "8",
                  "--lr", "1e-2")
    out = root / "lora"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    weights = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k for k in weights)  # merged: the public layout, no adapter tensors
    start = load_file(str(model / "model.safetensors"))
    query = "encoder.layer.0.attention.self.query.weight"
    key = "encoder.layer.0.attention.self.key.weight"
    assert (weights["bert." + query] - start[query]).abs().max() > 1e-6  # B A was merged into W
    assert torch.equal(weights["bert." + key], start[key])  # not a LoRA target: untouched
    # transformers reads it as a plain classifier with the same logits as minift
    ours = BertForSequenceClassification.from_pretrained(out, attn_impl="eager").eval()
    ref = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    ids = torch.randint(1, 30, (3, 7))
    with torch.no_grad():
        assert (ours(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max() <= 1e-5
    assert result["trainable_parameters"] < 0.5 * sum(v.numel() for v in weights.values())
    assert "cannot be combined with --freeze" in _error(capsys, root, model, "--lora-r", "4", "--freeze",
                                                        "embeddings")
    assert "lora_r (--lora-r)" in _error(capsys, root, model, "--lora-r", "0")


def _ner_files(root: Path) -> tuple[Path, Path]:
    words = ["alice", "bob", "went", "to", "paris", "london", "with", "carol", "and", "dave", "today"]
    tags = {"alice": "B-PER", "bob": "B-PER", "carol": "B-PER", "dave": "B-PER", "paris": "B-LOC",
            "london": "B-LOC"}
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(40):
        for i in torch.randint(0, len(words), (6,), generator=g).tolist():
            lines.append(f"{words[i]}\t{tags.get(words[i], 'O')}")
        lines.append("")
    (root / "ner.conll").write_text("\n".join(lines) + "\n", encoding="utf-8")
    text = root / "text.txt"
    text.write_text("\n".join(" ".join(words[j] for j in torch.randint(0, len(words), (12,), generator=g).tolist())
                              for _ in range(60)) + "\n", encoding="utf-8")
    return root / "ner.conll", text


def _resume_matches_uninterrupted(root: Path, task_flags: list[str]) -> None:
    """A run 'killed' after its step-2 checkpoint (later checkpoint and final files removed) and resumed
    ends bit-identical to the run left alone (dropout on)."""
    full, cut = root / "full", root / "cut"
    flags = [*task_flags, "--max-steps", "4", "--save-every", "2", "--keep", "5", "--device", "cpu", "--quiet"]
    assert main(["finetune", *flags, "--out", str(full)]) == 0
    assert main(["finetune", *flags, "--out", str(cut)]) == 0
    shutil.rmtree(cut / "checkpoints" / "step-00000004")
    (cut / "model.safetensors").unlink()
    assert main(["finetune", *flags, "--out", str(cut), "--resume"]) == 0
    a, b = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_is_exact_for_ner(tmp_path, capsys):
    model = write_tiny_bert(tmp_path / "tiny", dropout=0.1)
    conll, _ = _ner_files(tmp_path)
    _resume_matches_uninterrupted(tmp_path, ["--task", "ner", "--model", str(model), "--train", str(conll),
                                             "--dev", str(conll), "--batch-size", "8", "--lr", "1e-3"])


def test_resume_is_exact_for_causal_lm(tmp_path, capsys):
    _, text = _ner_files(tmp_path)
    byte_bpe = write_byte_bpe(tmp_path / "byte_bpe")  # one token per byte: no GPT-2 vocabulary needed
    gpt2 = tmp_path / "gpt2"
    pretrain(text, gpt2, arch="gpt2", size="nano", tokenizer=byte_bpe, max_steps=2, block_size=16, device="cpu",
             progress=False)
    _resume_matches_uninterrupted(tmp_path, ["--task", "causal-lm", "--model", str(gpt2), "--train", str(text),
                                             "--dev", str(text), "--batch-size", "4", "--max-length", "16"])


def start_run(cfg: FinetuneConfig) -> None:
    """What `finetune` does with --out before and after building the task, without the task."""
    run_dir = RunDirectory(cfg).open()
    run_dir.begin(torch.nn.Linear(2, 2))
    run_dir.close(failed=False)


def test_run_json_is_the_run_identity_and_a_damaged_one_is_named(tmp_path):
    """run.json, written atomically by a new run, is what --resume compares the flags with; a damaged
    run.json is an error naming the file, line and column, not a bare JSONDecodeError."""
    cfg = FinetuneConfig(out=tmp_path / "run", lr=3e-5)
    start_run(cfg)  # a new run: writes run.json
    run_file = tmp_path / "run" / "run.json"
    assert json.loads(run_file.read_text())["lr"] == 3e-5
    step = tmp_path / "run" / CHECKPOINTS / "step-00000001"
    step.mkdir(parents=True)
    (step / STATE).write_text("{}")
    cfg.resume = True
    check_run_identity(cfg)  # the same flags: resumable
    cfg.lr = 1e-3
    with pytest.raises(ValueError, match=r"holds a different run \(lr: run has 3e-05, now 0.001\)"):
        check_run_identity(cfg)
    run_file.write_text('{"task": ', encoding="utf-8")
    with pytest.raises(JSONError, match=r"run\.json:1:10: invalid JSON"):
        check_run_identity(cfg)


def test_the_identity_comes_from_the_config_fields_and_old_run_json_files_resume(tmp_path):
    """run_identity reads FinetuneConfig's field metadata: the fields the task reads, minus those that say
    how the run executes. A run.json written before a field existed resumes when the field has its
    default (the value the run had then), and not otherwise."""
    how = {"out", "save_every", "resume", "keep", "device", "attn_impl", "fast_tokenizer", "progress"}
    classification = run_identity(FinetuneConfig(out=tmp_path / "a"))
    assert not how & classification.keys()
    assert "label_all_subtokens" not in classification and "arch" not in classification  # ner, pretraining
    assert {"model", "train", "lr", "class_weights", "lora_r", "processes"} <= classification.keys()
    assert "label_all_subtokens" in run_identity(FinetuneConfig(task="ner", out=tmp_path / "b"))
    pretraining = run_identity(FinetuneConfig(task="pretrain", out=tmp_path / "c"))
    assert {"arch", "size", "text", "tokenizer", "block_size", "dev_fraction", "dropout"} <= pretraining.keys()
    assert not {"model", "train", "dev", "max_length", "class_weights", "label_all_subtokens"} & pretraining.keys()

    cfg = FinetuneConfig(out=tmp_path / "run")
    start_run(cfg)
    run_file = tmp_path / "run" / "run.json"
    old = json.loads(run_file.read_text())
    del old["label_smoothing"]  # as a run.json written before --label-smoothing existed
    run_file.write_text(json.dumps(old), encoding="utf-8")
    step = tmp_path / "run" / CHECKPOINTS / "step-00000001"
    step.mkdir(parents=True)
    (step / STATE).write_text("{}")
    cfg.resume = True
    check_run_identity(cfg)  # the field's default: the same run
    cfg.label_smoothing = 0.1
    with pytest.raises(ValueError, match=r"holds a different run \(label_smoothing: run has 0.0, now 0.1\)"):
        check_run_identity(cfg)


@pytest.mark.parametrize("impl, fused_calls", [("sdpa", 3), ("eager", 0)])
def test_the_fast_path_updates_with_the_fused_adamw_and_the_readable_one_with_the_loop(
        capsys, tiny, monkeypatch, impl, fused_calls):
    """--attn-impl sdpa (the default) runs AdamW's update in torch's fused kernel, eager the readable
    loop of lesson 08; tests/test_optim.py shows both give the same numbers as torch.optim.AdamW."""
    root, model = tiny
    calls = []
    real = torch._fused_adamw_
    monkeypatch.setattr(torch, "_fused_adamw_", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = _run(capsys, root, model, f"adamw-{impl}", "--attn-impl", impl, "--max-steps", "3")
    assert result["steps"] == 3
    # one kernel call per step and per (device, dtype) bucket of each parameter group: 2 groups here
    assert len(calls) == 2 * fused_calls
