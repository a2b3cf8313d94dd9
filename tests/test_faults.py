"""Faults and mistakes a real user meets: nothing lost, nothing silently wrong (issue 14).

Each test feeds one fault or malformed input to the command a user types (in-process through
`minift.cli.main`, or as a subprocess where a kill or the real stderr matters) and checks the error
text and that nothing was lost: the run that was in --out, the last complete checkpoint, the model.

The faults are real where the machine allows: kills are SIGKILL sent by the run to itself in the
middle of writing a checkpoint; a full disk is a small tmpfs mounted for the test (CI runs as root),
else an OSError(ENOSPC) raised where the write would fail. Each fault test prints how it simulated
the fault (pytest -s shows it).
"""

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from tests_support import VOCAB, write_byte_bpe, write_tiny_bert, write_tiny_dataset

from minift import hub
from minift.cli import build_parser, main
from minift.io import read_json
from minift.train import state

# Names that came with these fixes are imported in the tests that use them, so that each test of this
# file also runs, and fails for its own reason, on the code before them.
LOCK = ".minift.lock"
METRICS = {"classification": ("accuracy", "macro_f1", "loss"),
           "ner": ("f1", "precision", "recall", "macro_f1", "accuracy", "loss"),
           "causal-lm": ("loss", "perplexity"), "sft": ("loss", "perplexity"), "pretrain": ("loss", "perplexity"),
           "seq2seq": ("exact_match", "loss", "token_accuracy")}

REPO = Path(__file__).resolve().parents[1]
transformers.logging.set_verbosity_error()


# ---- fixtures and helpers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    write_tiny_bert(root / "model", dropout=0.0)
    write_tiny_dataset(root / "train.tsv", 32, 0)
    write_tiny_dataset(root / "dev.tsv", 8, 1)
    return root


def run(capsys, *argv) -> tuple[int, dict | None, str]:
    """`minift ARGV` in this process: (exit status, the JSON line or None, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, (json.loads(lines[-1], parse_constant=_no_constant) if lines else None), err


def say(capsys, how: str) -> None:
    """How a fault was simulated, on the terminal even under pytest's capture (the CI log shows it)."""
    with capsys.disabled():
        print(f"\n  [{how}]")


def _no_constant(name):  # strict JSON: NaN / Infinity / -Infinity are not JSON
    raise AssertionError(f"the JSON line holds {name}, which is not JSON")


def finetune(files: Path, out: Path, *extra) -> list[str]:
    return ["finetune", "--model", files / "model", "--train", files / "train.tsv", "--dev", files / "dev.tsv",
            "--out", out, "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--quiet", "--device", "cpu",
            *extra]


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path``; yields False where mounting is not allowed."""
    path.mkdir(parents=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)


def fill(folder: Path) -> Path:
    """Write zeros into ``folder`` until its file system is full."""
    filler = folder / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * (1 << 16))
            f.flush()
    return filler


# ---- 1. a new run into a folder that holds a run; --overwrite; two runs on one folder ---------------------


def test_a_new_run_never_overwrites_a_finished_run_and_overwrite_clears_it_all(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, *finetune(files, out))[0] == 0
    (out / "curves.png").write_bytes(b"old run's curves")
    before = weights(out)
    other = tmp_path / "other.tsv"  # another label set: best/ must never mix the two runs
    train = (files / "train.tsv").read_text(encoding="utf-8")
    other.write_text(train.replace("\tpositive", "\tgood").replace("\tnegative", "\tbad"), encoding="utf-8")
    code, _, err = run(capsys, *finetune(files, out, "--train", other))
    assert code == 1 and "already holds a finished run" in err and "--overwrite" in err
    assert all(torch.equal(a, b) for a, b in zip(before.values(), weights(out).values()))  # nothing touched
    assert (out / "curves.png").is_file()

    code, _, err = run(capsys, *finetune(files, out, "--train", other, "--dev", other, "--overwrite"))
    assert code == 0, err
    assert not (out / "curves.png").exists()  # the old run's every file is gone
    for folder in (out, out / "best"):
        assert set(read_json(folder / "config.json")["id2label"].values()) == {"good", "bad"}
    assert read_json(out / "run.json")["train"]["path"] == str(other)


def test_overwrite_refuses_a_folder_that_is_not_a_run(files, tmp_path, capsys):
    mine = tmp_path / "mine"  # `--out .` in a source tree: files minift did not write
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, *finetune(files, mine))
    assert code == 1 and "is not empty and holds no run" in err and "notes.txt" in err
    code, _, err = run(capsys, *finetune(files, mine, "--overwrite"))
    assert code == 1 and "holds no run.json" in err and "nothing was deleted" in err
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_two_runs_cannot_write_one_folder(files, tmp_path, capsys):
    from minift.train.config import FinetuneConfig
    from minift.train.rundir import RunDirectory

    out = tmp_path / "run"
    holder = RunDirectory(FinetuneConfig(out=out)).open()  # as a run in progress holds it
    try:
        code, _, err = run(capsys, *finetune(files, out))
        assert code == 1 and f"in use by process {os.getpid()}" in err and "another --out" in err
    finally:
        holder.close(failed=True)
    assert not out.exists()  # the holder failed before it began: its folder is gone with it
    assert run(capsys, *finetune(files, out))[0] == 0  # the lock dies with the run that held it
    assert not (out / LOCK).exists()


# ---- 2. every flag checked before the model loads -------------------------------------------------------


@pytest.mark.parametrize("task,metric", [("classification", "f1"), ("ner", "accuracy_score"), ("causal-lm", "f1")])
def test_a_metric_name_the_task_does_not_report_is_refused_before_any_work(files, tmp_path, capsys, task, metric):
    code, _, err = run(capsys, "finetune", "--task", task, "--model", tmp_path / "no-such-model", "--train",
                       files / "train.tsv", "--dev", files / "dev.tsv", "--metric", metric, "--out", tmp_path / "o")
    assert code == 1 and f"--metric {metric!r} is not a dev metric" in err
    assert ", ".join(METRICS[task]) in err  # the valid names, in the message
    assert "no-such-model" not in err and not (tmp_path / "o").exists()  # before the model was even looked for


def test_every_task_reports_the_metrics_its_flag_accepts(files, tmp_path, capsys):
    """METRICS (what --metric accepts) is what each task's evaluation returns."""
    from minift.train import config

    assert config.METRICS == METRICS
    code, _, err = run(capsys, *finetune(files, tmp_path / "c", "--metric", "macro_f1", "--epochs", "1"))
    assert code == 0, err
    evals = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert set(METRICS["classification"]) <= next(e for e in evals if e["event"] == "eval").keys()


# ---- 3. a full disk ---------------------------------------------------------------------------------------


def test_a_disk_too_small_for_one_checkpoint_is_refused_before_training(files, tmp_path, capsys, monkeypatch):
    disk = tmp_path / "disk"
    with small_disk(disk, "256k") as mounted:
        if not mounted:
            say(capsys, "disk full simulated: shutil.disk_usage reports 100 KiB free (mounting a tmpfs is not allowed)")
            real = shutil.disk_usage
            monkeypatch.setattr("minift.train.rundir.shutil.disk_usage",
                                lambda p: real(p)._replace(free=100 << 10))
        else:
            say(capsys, "disk full simulated: a 256 KiB tmpfs mounted for the test")
        code, _, err = run(capsys, *finetune(files, disk / "run"))
        assert code == 1 and "free on its file system, but one checkpoint of this run needs about" in err
        assert "Traceback" not in err and not (disk / "run").exists()  # nothing written, nothing left


def test_a_disk_that_fills_during_a_save_keeps_the_last_checkpoint(files, tmp_path, capsys, monkeypatch):
    disk = tmp_path / "disk"
    saves = []
    real_save = state.save_checkpoint
    with small_disk(disk, "24m") as mounted:
        def save_into_a_full_disk(run_dir, **kw):
            saves.append(kw["progress"]["step"])
            if len(saves) == 2:
                if mounted:
                    fill(disk)
                else:
                    def no_space(*a, **k):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    monkeypatch.setattr(state, "save_file", no_space)
            return real_save(run_dir, **kw)

        say(capsys, "disk full simulated: " + ("a 24 MiB tmpfs, filled with zeros before the second checkpoint"
                                         if mounted else "OSError(ENOSPC) from the second checkpoint's tensor file"))
        monkeypatch.setattr(state, "save_checkpoint", save_into_a_full_disk)
        out = disk / "run"
        code, _, err = run(capsys, *finetune(files, out, "--save-every", "2"))
        assert code == 1 and "Traceback" not in err
        message = err.strip().splitlines()[-1]
        assert "error:" in message and str(out / "checkpoints" / "step-00000004") in message
        assert "no space left" in message and "needs about" in message
        assert "step-00000002, is intact" in message and "--resume" in message
        assert [p.name for p in state.checkpoint_dirs(out)] == ["step-00000002"]
        assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no half folder
        (disk / "filler").unlink(missing_ok=True)
        monkeypatch.setattr(state, "save_checkpoint", real_save)
        monkeypatch.undo()
        code, _, err = run(capsys, *finetune(files, out, "--save-every", "2", "--resume"))
        assert code == 0 and "resumed from" in err and "step-00000002" in err


def test_a_library_write_error_for_a_full_disk_is_one_sentence(tmp_path, monkeypatch, capsys):
    """safetensors reports a full disk as SafetensorError("... (os error 28)"), not as an OSError."""
    from safetensors import SafetensorError

    from minift.checkpoint import save_state_dict
    from minift.io import DiskFullError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" }) (os error 28)")

    say(capsys, "disk full simulated: safetensors' save_file raises its own error for errno 28")
    monkeypatch.setattr("minift.checkpoint.files.save_file", full)
    (tmp_path / "model.safetensors").write_bytes(b"old")
    with pytest.raises(DiskFullError, match=r"model\.safetensors: no space left on the device"):
        save_state_dict({"w": torch.zeros(2)}, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary file left


# ---- 4. kills during saves leave debris that the next start removes -------------------------------------

KILL_DURING_SECOND_SAVE = """
import os, signal, sys
from minift.train import state
real, calls = state.save_file, []
def save_file(tensors, path, **kw):
    real(tensors, path, **kw)  # trainer_state.safetensors written into the hidden folder, then killed
    calls.append(path)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
state.save_file = save_file
from minift.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kills_during_checkpoint_saves_leave_no_debris_after_resume(files, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [str(a) for a in finetune(files, out, "--save-every", "2", "--epochs", "3")]
    say(capsys, "kill simulated: the run sends itself SIGKILL inside its second checkpoint save, twice")
    debris = []
    for attempt in range(2):
        extra = ["--resume"] if attempt else []
        proc = subprocess.run([sys.executable, "-c", KILL_DURING_SECOND_SAVE, *argv, *extra], cwd=REPO,
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        hidden = [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
        assert len(hidden) == 1 and hidden[0].name.startswith(".step-") and hidden[0].is_dir()
        assert attempt == 0 or "removed 1 temporary file(s) of interrupted saves" in proc.stderr
        debris.append(hidden[0].name)
    assert len(set(debris)) == 2  # each kill left its own; each start removed the one before
    proc = subprocess.run([sys.executable, "-m", "minift", *argv, "--resume"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "removed 1 temporary file(s)" in proc.stderr
    assert not [p for p in out.rglob(".*") if p.name != LOCK]  # no hidden debris anywhere in the run


# ---- 5. permissions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_have_the_permissions_the_umask_allows(files, tmp_path, capsys, umask):
    old = os.umask(umask)
    try:
        assert run(capsys, *finetune(files, tmp_path / "run", "--save-every", "4", "--epochs", "1"))[0] == 0
    finally:
        os.umask(old)
    paths = [p for p in (tmp_path / "run").rglob("*")]
    assert {p.name for p in paths} >= {"config.json", "model.safetensors", "run.json", "vocab.txt", "metrics.jsonl",
                                       "trainer_state.json", "trainer_state.safetensors"}
    for p in paths:
        expected = (0o777 if p.is_dir() else 0o666) & ~umask
        assert p.stat().st_mode & 0o777 == expected, f"{p}: {oct(p.stat().st_mode & 0o777)}"


# ---- 6 and 7. the weights cache and local paths -------------------------------------------------------


def test_two_local_folders_of_one_name_get_two_copies(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIFT_WEIGHTS_DIR", str(tmp_path / "weights"))
    a, b = tmp_path / "A" / "model", tmp_path / "B" / "model"
    shutil.copytree(files / "model", a)
    write_tiny_bert(b, seed=1)
    code, first, _ = run(capsys, "weights", "pull", a)
    assert code == 0
    code, second, _ = run(capsys, "weights", "pull", b)
    assert code == 0 and second["folder"] != first["folder"]
    for source, copy in ((a, first["folder"]), (b, second["folder"])):
        assert (Path(copy) / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    code, again, err = run(capsys, "weights", "pull", a)
    assert again["folder"] == first["folder"] and "already in" in err


def test_a_mistyped_local_path_is_never_sent_to_the_hub(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()

    def no_network(*a, **k):
        raise AssertionError("a local path was sent to the hub")

    monkeypatch.setattr(hub, "_from_hub", no_network)
    for argv in (["predict", "--model", "runs/sstt", "text"], ["evaluate", "--model", "runs/sstt", "--data",
                                                                 files / "dev.tsv"],
                 finetune(files, tmp_path / "o", "--model", "runs/sstt")):
        code, _, err = run(capsys, *argv)
        assert code == 1 and "runs/sstt does not exist" in err and "local path, not a hub id" in err
        assert "huggingface" not in err


# ---- 8. divergence and strict JSON ------------------------------------------------------------------------


def test_a_diverging_pretraining_run_is_an_error_and_no_line_holds_infinity(tmp_path, capsys):
    """The issue's case: after 4 steps at lr 1e3 the dev loss is about 3e8, finite, and its perplexity
    exp(loss) overflows to inf (before the fix: saved, exit 0, `"dev_perplexity": Infinity`). Later
    steps would make the training loss NaN, which the loop caught already."""
    text = tmp_path / "text.txt"
    text.write_text("the film was great and the food was warm\n" * 200, encoding="utf-8")
    code, result, err = run(capsys, "pretrain", "--arch", "gpt2", "--size", "nano", "--text", text, "--tokenizer",
                            write_byte_bpe(tmp_path / "bytes"), "--out", tmp_path / "lm", "--lr", "1e3",
                            "--max-steps", "4", "--block-size", "16", "--quiet", "--device", "cpu")
    assert code == 1 and result is None, err
    assert ("diverged" in err or "is nan" in err or "is inf" in err) and "--lr" in err and "Traceback" not in err
    assert not (tmp_path / "lm" / "model.safetensors").exists()  # a diverged model is not saved as the result
    for line in (tmp_path / "lm" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=_no_constant)


def test_json_lines_are_strict():
    from minift.io import json_line

    assert json_line({"loss": float("nan"), "ppl": float("inf"), "x": [float("-inf"), 1.5]}) == (
        '{"loss": null, "ppl": null, "x": [null, 1.5]}')


def test_a_nan_gradient_stops_the_run_before_the_update():
    """A finite loss whose gradient is not finite (an overflow in backward) must not reach the weights."""
    from types import SimpleNamespace

    from minift.optim import AdamW
    from minift.optim.schedules import make_scheduler
    from minift.train.loop import TrainArgs, TrainingError, train

    class InfiniteGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w):
            return w.sum()

        @staticmethod
        def backward(ctx, grad):
            return torch.full((1,), float("inf"))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, input_ids, labels):
            return SimpleNamespace(loss=InfiniteGradient.apply(self.w))

    model = Model()
    opt = AdamW(model.parameters(), lr=0.1)
    loader = [{"input_ids": torch.zeros(1, 1), "labels": torch.zeros(1)}]
    with pytest.raises(TrainingError, match="gradient norm is (inf|nan) at step 1"):
        train(model, opt, make_scheduler(opt, "linear", warmup_steps=0, total_steps=1), loader,
              device=torch.device("cpu"), args=TrainArgs(epochs=1, progress=False))
    assert torch.equal(model.w.detach(), torch.ones(1))  # not updated


def test_generation_refuses_logits_that_are_not_finite():
    """Greedy decoding of NaN logits would pick token 0 every time, silently."""
    from minift.generate import generate
    from minift.models.gpt2 import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=16, n_embd=8, n_layer=1, n_head=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(ValueError, match="logits hold NaN or infinity at new token 1"):
        generate(model, torch.tensor([[1, 2, 3]]), 4)


# ---- 9. useless models ------------------------------------------------------------------------------------


def test_predict_and_evaluate_refuse_a_head_that_was_never_trained(files, capsys):
    code, _, err = run(capsys, "predict", "--model", files / "model", "great film", "--device", "cpu")
    assert code == 1 and "no trained BertForSequenceClassification head" in err and "--allow-untrained-head" in err
    code, _, err = run(capsys, "evaluate", "--model", files / "model", "--data", files / "dev.tsv", "--quiet")
    assert code == 1 and "no trained" in err
    code, result, err = run(capsys, "predict", "--model", files / "model", "great film", "--allow-untrained-head")
    assert code == 0 and len(result["predictions"]) == 1


def test_training_labels_of_one_class_are_refused_before_training(files, tmp_path, capsys):
    one = tmp_path / "one.tsv"
    one.write_text("text\tlabel\n" + "great film\tpositive\n" * 8, encoding="utf-8")
    code, _, err = run(capsys, *finetune(files, tmp_path / "o", "--train", one, "--dev", one))
    assert code == 1 and "every training example has the label 'positive'" in err
    assert not (tmp_path / "o").exists()  # a run that fails at start-up leaves no folder


# ---- 10. NER and causal-LM evaluation ---------------------------------------------------------------------


def ner_file(path: Path, tags: list[str]) -> Path:
    sentences = [[("the", "O"), ("film", "O"), ("great", tags[i % len(tags)]), ("was", "O")] for i in range(16)]
    path.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in s) for s in sentences) + "\n", encoding="utf-8")
    return path


def test_evaluate_ner_and_unknown_tags(files, tmp_path, capsys):
    train = ner_file(tmp_path / "train.conll", ["B-person"])
    dev = ner_file(tmp_path / "dev.conll", ["B-person", "B-place"])  # B-place: never in training
    base = ["finetune", "--task", "ner", "--model", files / "model", "--train", train, "--dev", dev, "--epochs", "2",
            "--batch-size", "8", "--lr", "5e-3", "--quiet", "--device", "cpu", "--max-length", "16"]
    code, _, err = run(capsys, *base, "--out", tmp_path / "a")
    assert code == 1 and "dev.conll:" in err and "'B-place'" in err and "--unknown-tags o" in err
    with pytest.warns(UserWarning, match="8 tags the model has no label for were read as O"):
        code, result, err = run(capsys, *base, "--out", tmp_path / "ner", "--unknown-tags", "o")
    assert code == 0, err
    code, _, err = run(capsys, "evaluate", "--task", "ner", "--model", tmp_path / "ner", "--data", dev, "--quiet")
    assert code == 1 and "'B-place'" in err
    with pytest.warns(UserWarning, match="read as O"):
        code, metrics, err = run(capsys, "evaluate", "--task", "ner", "--model", tmp_path / "ner", "--data", dev,
                                 "--unknown-tags", "o", "--quiet")
    assert code == 0, err
    assert metrics["f1"] == pytest.approx(result["dev_f1"], abs=1e-12) and metrics["sentences"] == 16


def test_evaluate_causal_lm_at_the_trained_block_length(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the film was great and the food was warm\n" * 40, encoding="utf-8")
    lm = tmp_path / "lm"
    assert run(capsys, "pretrain", "--arch", "gpt2", "--size", "nano", "--text", text, "--tokenizer",
               write_byte_bpe(tmp_path / "bytes"), "--out", lm, "--max-steps", "2", "--block-size", "16", "--quiet",
               "--device", "cpu")[0] == 0
    code, result, err = run(capsys, "finetune", "--task", "causal-lm", "--model", lm, "--train", text, "--dev", text,
                            "--out", tmp_path / "ft", "--max-steps", "2", "--max-length", "24", "--batch-size", "4",
                            "--quiet", "--device", "cpu")
    assert code == 0, err
    code, metrics, err = run(capsys, "evaluate", "--task", "causal-lm", "--model", tmp_path / "ft", "--data", text,
                             "--quiet")
    assert code == 0, err
    assert metrics["perplexity"] == pytest.approx(result["dev_perplexity"], rel=1e-6)  # blocks of 24, from run.json


# ---- 11. the rest of a user's day ---------------------------------------------------------------------------


def test_evaluate_uses_the_trained_length_and_shows_progress_unless_quiet(files, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, _ = run(capsys, *finetune(files, out, "--max-length", "4"))  # [CLS] + 2 words + [SEP]
    assert code == 0
    dev_loss = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]["loss"]
    losses = {}
    for flags in ([], ["--max-length", "4"], ["--max-length", "128"]):
        code, metrics, err = run(capsys, "evaluate", "--model", out, "--data", files / "dev.tsv", *flags)
        assert code == 0 and "evaluating" in err  # the progress bar
        losses[tuple(flags)] = metrics["loss"]
    assert losses[()] == losses[("--max-length", "4")] == pytest.approx(dev_loss, abs=1e-6)
    assert losses[("--max-length", "128")] != losses[()]
    _, _, err = run(capsys, "evaluate", "--model", out, "--data", files / "dev.tsv", "--quiet")
    assert "evaluating" not in err


def test_resume_reads_the_flags_of_the_run_and_refuses_other_ones(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_save = state.save_checkpoint

    def ctrl_c_after_first_save(run_dir, **kw):
        folder = real_save(run_dir, **kw)
        if len(state.checkpoint_dirs(run_dir)) == 1 and not pressed:
            pressed.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # as a user pressing Ctrl-C: the run stops after this step
        return folder

    pressed = []

    monkeypatch.setattr(state, "save_checkpoint", ctrl_c_after_first_save)
    code, _, err = run(capsys, *finetune(files, out, "--save-every", "3", "--lr", "2e-3", "--max-length", "12"))
    monkeypatch.setattr(state, "save_checkpoint", real_save)
    assert code == 130 and "continue with --resume" in err
    # the checkpoint is a model folder of its own: tokenizer files included
    step = state.checkpoint_dirs(out)[-1]
    assert (step / "vocab.txt").read_text().split() == VOCAB
    code, result, err = run(capsys, "predict", "--model", step, "great film", "--device", "cpu")
    assert code == 0 and result["predictions"][0]["label"] in ("positive", "negative")

    code, _, err = run(capsys, *finetune(files, out))  # a new run, same configuration but for the flags
    assert code == 1 and "already holds another run" in err
    code, _, err = run(capsys, *finetune(files, out, "--save-every", "3", "--lr", "2e-3", "--max-length", "12"))
    assert code == 1 and "interrupted run of this configuration" in err and "--resume" in err
    code, _, err = run(capsys, "finetune", "--out", out, "--resume", "--lr", "5e-5", "--quiet")
    assert code == 1 and "lr: run has 0.002, now 5e-05" in err
    code, result, err = run(capsys, "finetune", "--out", out, "--resume", "--quiet", "--device", "cpu")
    assert code == 0, err
    assert "resumed from" in err and "flags not given are those of" in err and result["steps"] == 8


def test_warnings_are_one_line_each(files, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "minift", "predict", "--model", str(files / "model"), "great film",
                           "--allow-untrained-head", "--device", "cpu"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert warning and all(line.startswith("minift: warning: ") for line in warning), proc.stderr
    assert "newly initialised: classifier.bias, classifier.weight" in warning[0]
    assert "warnings.warn" not in proc.stderr and "UserWarning" not in proc.stderr


def test_every_option_has_help_and_says_its_default():
    parser = build_parser()

    def commands(p, prefix):
        for action in p._actions:
            if action.choices and hasattr(action, "_name_parser_map"):
                for name, sub in action._name_parser_map.items():
                    yield from commands(sub, f"{prefix} {name}")
        yield prefix, p

    missing = []
    for name, p in commands(parser, "minift"):
        for action in p._actions:
            if action.dest in ("help", "command", "action") or hasattr(action, "_name_parser_map"):
                continue
            text = action.help or ""
            if not text:
                missing.append(f"{name} {action.option_strings or action.dest}: no help")
            elif action.default not in (None, False) and "%(default)" not in text:
                missing.append(f"{name} {action.option_strings}: default {action.default!r} not shown")
            elif action.option_strings and action.default is None and action.required is False \
                    and action.nargs != 0 and "default" not in text and "required" not in text:
                missing.append(f"{name} {action.option_strings}: says nothing of what happens without it")
    assert missing == []


def test_a_run_that_fails_at_start_up_leaves_no_folder(files, tmp_path, capsys):
    for bad in (["--train", tmp_path / "nope.tsv"], ["--model", tmp_path / "no-model"]):
        code, _, err = run(capsys, *finetune(files, tmp_path / "o", *bad))
        assert code == 1 and not (tmp_path / "o").exists(), err
    existing = tmp_path / "empty"
    existing.mkdir()
    assert run(capsys, *finetune(files, existing, "--train", tmp_path / "nope.tsv"))[0] == 1
    assert existing.is_dir() and not list(existing.iterdir())  # a folder the user made stays, empty


def test_pretrain_without_a_tokenizer_never_downloads_a_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINIFT_WEIGHTS_DIR", str(tmp_path / "weights"))

    def no_network(*a, **k):
        raise AssertionError("pretrain downloaded a model for its tokenizer")

    monkeypatch.setattr(hub, "_from_hub", no_network)
    monkeypatch.setattr(hub, "_from_wheel", no_network)
    text = tmp_path / "text.txt"
    text.write_text("a line\n" * 50, encoding="utf-8")
    code, _, err = run(capsys, "pretrain", "--text", text, "--out", tmp_path / "lm", "--quiet")
    assert code == 1 and "no --tokenizer given" in err and "--tokenizer FOLDER" in err
    assert not (tmp_path / "lm").exists()


# ---- 12. vocabularies --------------------------------------------------------------------------------------


def test_a_binary_or_short_vocabulary_is_named(files, tmp_path, capsys):
    binary = shutil.copytree(files / "model", tmp_path / "binary")
    (binary / "vocab.txt").write_bytes(b"[PAD]\n\x89PNG\r\n\x1a\n\xff\xfe\x00")
    code, _, err = run(capsys, *finetune(files, tmp_path / "o", "--model", binary))
    assert code == 1 and f"{binary / 'vocab.txt'}:2: not UTF-8 text" in err
    short = shutil.copytree(files / "model", tmp_path / "short")
    (short / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB[:-3]), encoding="utf-8")
    code, _, err = run(capsys, *finetune(files, tmp_path / "o", "--model", short))
    assert code == 1 and f"the tokenizer has {len(VOCAB) - 3} tokens but the model's embedding has {len(VOCAB)}" in err


# ---- exit codes ----------------------------------------------------------------------------------------------


def test_exit_codes_are_the_documented_ones(capsys):
    from minift.cli import EXIT_CODES

    assert EXIT_CODES == {"success": 0, "error": 1, "usage": 2, "interrupted": 130}
    with pytest.raises(SystemExit) as usage:
        main(["finetune", "--no-such-flag"])
    assert usage.value.code == EXIT_CODES["usage"]
    assert main([]) == EXIT_CODES["usage"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## What happens when"):]
    for code in EXIT_CODES.values():
        assert f"`{code}`" in section
