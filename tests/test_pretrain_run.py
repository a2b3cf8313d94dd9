"""`minift pretrain` is the one run every task takes (minift/train/finetune.py): killed with SIGKILL and
resumed it ends bit-identical to the run left alone (GPT-2 and BERT, dropout on, BERT's masks drawn by a
generator of their own); two processes under torchrun end where one ends; --precision, --grad-accum,
--patience and --lora-r act as they do for fine-tuning; a wrong flag stops the run before any work.

The models are nano GPT-2s and BERTs with one-token-per-byte / per-character vocabularies, on the first
lines of ../shared/data/text/corpus.en, so that each run takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests_support import write_byte_bpe, write_char_wordpiece

from minift.cli import main
from minift.models.bert import BertForMaskedLM
from minift.tokenizer import load_tokenizer
from minift.train import state
from minift.train.device import set_seed
from minift.train.finetune import pretrain
from minift.train.tasks.pretraining import lm_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("pretrain_run")
    lines = (shared_data / "text" / "corpus.en").read_text(encoding="utf-8").split("\n")
    (root / "corpus.txt").write_text("\n".join(lines[:80]) + "\n", encoding="utf-8")
    (root / "short.txt").write_text("\n".join(lines[:30]) + "\n", encoding="utf-8")
    return {"root": root, "gpt2": write_byte_bpe(root / "byte_bpe"), "bert": write_char_wordpiece(root / "chars"),
            "text": root / "corpus.txt", "short": root / "short.txt"}


def pretrain_args(files: dict, arch: str, out: Path, *extra: str, text: str = "text") -> list[str]:
    return ["pretrain", "--arch", arch, "--size", "nano", "--text", str(files[text]), "--tokenizer", str(files[arch]),
            "--out", str(out), "--block-size", "32", "--seed", "3", "--quiet", "--device", "cpu", *extra]


def run(args: list[str], torchrun: int = 0) -> subprocess.CompletedProcess:
    base = [sys.executable, "-m", "minift"] if not torchrun else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}", "-m", "minift"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*base, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
                          check=False)  # the caller reads the exit code


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def log_lines(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "examples_per_s"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def in_process(capsys, args: list[str]) -> dict:
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


# ---- resume after SIGKILL --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_sigkill_then_resume_is_bit_identical(files, arch):
    """Dropout on; for BERT the masks of the training batches come from MLMCollate's own generator,
    whose state the checkpoint carries, and the dev masks are rebuilt from the seed."""
    flags = ("--max-steps", "150", "--batch-size", "8", "--save-every", "10", "--keep", "2")
    reference = files["root"] / f"{arch}-alone"
    proc = run(pretrain_args(files, arch, reference, *flags))
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = files["root"] / f"{arch}-killed"
    cmd = [sys.executable, "-m", "minift", *pretrain_args(files, arch, out, *flags)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    killed = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(state.checkpoint_dirs(out)) < 2 and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert killed.poll() is None, "the run ended before it could be killed: make it longer"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (out / "model.safetensors").exists()  # it really stopped before the end

    other = run(pretrain_args(files, arch, out, *flags, "--resume") + ["--block-size", "16"])
    assert other.returncode == 1 and "different run" in other.stderr and "block_size" in other.stderr
    resumed = run(pretrain_args(files, arch, out, *flags, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a, b = weights(reference), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    assert log_lines(out) == log_lines(reference)  # the same log: no duplicated or missing lines
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert {"task", "arch", "size", "parameters", "out", "steps", "train_seconds", "dev_loss", "dev_perplexity",
            "dev_loss_before", "dev_perplexity_before", "dev_tokens"} <= result.keys()
    assert (result["task"], result["arch"], result["size"], result["steps"]) == ("pretrain", arch, "nano", 150)
    identity = json.loads((out / "run.json").read_text())
    assert {"arch": arch, "size": "nano", "tokenizer": str(files[arch]), "block_size": 32,
            "dev_fraction": 0.05}.items() <= identity.items()
    assert identity["text"]["path"] == str(files["text"]) and len(identity["text"]["sha256"]) == 64
    assert "model" not in identity and "out" not in identity  # not read by pretraining / how, not what


# ---- several processes, accumulation ---------------------------------------------------------------------

# Dropout off (--dropout 0): each process draws its own masks, so with dropout on P processes are a
# different (valid) run. float32 weights; only the order in which the gradients are summed differs
# (all-reduce or accumulation vs one batch): 1e-6 on every weight after 4 steps, as for fine-tuning
# (tests/test_distributed.py).
TOL = 1e-6


@pytest.fixture(scope="module")
def one_process_batch_8(files):
    out = files["root"] / "gpt2-batch8"
    proc = run(pretrain_args(files, "gpt2", out, "--max-steps", "4", "--batch-size", "8", "--dropout", "0",
                             "--attn-impl", "eager"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_processes_end_where_one_ends(files, one_process_batch_8):
    single, single_result = one_process_batch_8
    out = files["root"] / "gpt2-ddp"
    proc = run(pretrain_args(files, "gpt2", out, "--max-steps", "4", "--batch-size", "4", "--dropout", "0",
                             "--attn-impl", "eager"), torchrun=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # one result line, from rank 0
    result = json.loads(lines[0])
    assert result["processes"] == 2 and result["steps"] == single_result["steps"] == 4
    assert max_diff(weights(single), weights(out)) <= TOL
    assert result["dev_loss"] == pytest.approx(single_result["dev_loss"], abs=1e-6)
    # negative control: two processes of batch 8 take a global batch of 16 and end elsewhere
    wrong = files["root"] / "gpt2-ddp-16"
    proc = run(pretrain_args(files, "gpt2", wrong, "--max-steps", "4", "--batch-size", "8", "--dropout", "0",
                             "--attn-impl", "eager"), torchrun=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert max_diff(weights(single), weights(wrong)) > 1e-4


def test_grad_accum_2_of_batch_4_is_batch_8(files, one_process_batch_8, capsys):
    single, _ = one_process_batch_8
    out = files["root"] / "gpt2-accum"
    result = in_process(capsys, pretrain_args(files, "gpt2", out, "--max-steps", "4", "--batch-size", "4",
                                              "--grad-accum", "2", "--dropout", "0", "--attn-impl", "eager"))
    assert result["steps"] == 4
    assert max_diff(weights(single), weights(out)) <= TOL
    # negative control: batch 4 without accumulation is another run
    plain = files["root"] / "gpt2-batch4"
    in_process(capsys, pretrain_args(files, "gpt2", plain, "--max-steps", "4", "--batch-size", "4", "--dropout",
                                     "0", "--attn-impl", "eager"))
    assert max_diff(weights(single), weights(plain)) > 1e-4


# ---- precision, early stopping, LoRA ------------------------------------------------------------------------


def test_bf16_runs_and_changes_the_numbers(files, capsys):
    flags = ("--max-steps", "3", "--batch-size", "8")
    fp32 = in_process(capsys, pretrain_args(files, "gpt2", files["root"] / "fp32", *flags))
    bf16 = in_process(capsys, pretrain_args(files, "gpt2", files["root"] / "bf16", *flags, "--precision", "bf16"))
    assert bf16["steps"] == fp32["steps"] == 3
    assert bf16["dev_loss"] != fp32["dev_loss"]  # the forward ran in bfloat16
    assert max_diff(weights(files["root"] / "fp32"), weights(files["root"] / "bf16")) > 0


def test_patience_watches_dev_loss_lower_is_better(files, capsys):
    """The short text gives 14 steps an epoch. Trained normally the dev loss falls every epoch, so with
    --patience 1 the run goes on (lower is better: a mode of "max" would stop after epoch 2); with a
    learning rate too small to change a float32 weight it stays the same, and the run stops."""
    flags = ("--max-steps", "42", "--batch-size", "8", "--lr", "3e-3", "--patience", "1")
    out = files["root"] / "patience-learns"
    learns = in_process(capsys, pretrain_args(files, "gpt2", out, *flags, text="short"))
    losses = [e["loss"] for e in log_lines(out) if e["event"] == "eval"]
    assert len(losses) == 4 and losses[1] > losses[2] > losses[3]  # before, then after epochs 1, 2, 3
    assert learns["stopped_early"] is False and learns["steps"] == 42

    out = files["root"] / "patience-stuck"
    stuck = in_process(capsys, pretrain_args(files, "gpt2", out, *flags[:4], "--lr", "1e-12", "--patience", "1",
                                             text="short"))
    events = log_lines(out)
    assert stuck["stopped_early"] is True and stuck["steps"] == 28  # stopped after epoch 2
    assert [e["epoch"] for e in events if e["event"] == "eval"] == [0, 1, 2]
    assert next(e for e in events if e["event"] == "early_stop")["best_epoch"] == 1


def test_lora_trains_the_adapters_and_saves_a_merged_checkpoint(files, capsys):
    out = files["root"] / "bert-lora"
    result = in_process(capsys, pretrain_args(files, "bert", out, "--max-steps", "3", "--batch-size", "8",
                                              "--lora-r", "2", "--lr", "1e-2"))
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert result["trainable_parameters"] < result["parameters"] / 2
    # The fresh model the run started from: the same seed before the same construction.
    set_seed(3)
    start = BertForMaskedLM(lm_config("bert", "nano", load_tokenizer(files["bert"]))).state_dict()
    end = weights(out)
    assert not any("lora" in k for k in end)  # merged: the public layout, no adapter tensors
    query, key = ("bert.encoder.layer.0.attention.self." + name + ".weight" for name in ("query", "key"))
    assert (end[query] - start[query]).abs().max() > 1e-6  # B A merged into W
    assert torch.equal(end[key], start[key])  # not a LoRA target: frozen


# ---- flag errors before any work ------------------------------------------------------------------------


@pytest.mark.parametrize("flags,message", [
    (["--size", "huge"], "unknown --size 'huge'; choose one of nano, tiny"),
    (["--block-size", "500"], "block_size=500 must be an int in [2, n_positions=128]"),
    (["--dev-fraction", "1.5"], "--dev-fraction must be in (0, 1)"),
    (["--precision", "fp16"], "--precision fp16 needs a CUDA device"),
    (["--grad-accum", "0"], "--grad-accum must be a positive integer, got 0"),
    (["--lora-alpha", "8"], "--lora-alpha given without --lora-r R"),
    (["--freeze-n", "1"], "--freeze-n 1 is only used with --freeze first-n"),
    (["--patience", "0"], "--patience must be a positive integer, got 0"),
    (["--dropout", "1"], "--dropout must be a probability in [0, 1), got 1.0"),
])
def test_flag_errors_stop_before_any_work(files, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert main(pretrain_args(files, "gpt2", out, *flags)) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # no run.json, no log: nothing was done


def test_python_callers_get_the_same_checks(files, tmp_path):
    with pytest.raises(ValueError, match=r"--label-smoothing is not used by minift pretrain; it applies to "
                                         r"--task classification/ner"):
        pretrain(files["text"], tmp_path / "a", size="nano", tokenizer=files["gpt2"], label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"--model is not used by minift pretrain"):
        pretrain(files["text"], tmp_path / "b", size="nano", tokenizer=files["gpt2"], model="gpt2")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
