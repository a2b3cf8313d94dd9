"""Resumable checkpoints: a run killed at an arbitrary moment and resumed ends bit-identical to the
same run left alone (CPU, dropout on); saves are atomic; --resume refuses what is not the same run."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from tests_support import write_tiny_bert, write_tiny_dataset

from minift.train import state

REPO = Path(__file__).resolve().parents[1]
transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    write_tiny_bert(root / "model", dropout=0.1)  # dropout on: the RNG state must be restored too
    write_tiny_dataset(root / "train.tsv", 40, 0)
    write_tiny_dataset(root / "dev.tsv", 12, 1)
    return root


def finetune_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "minift", "finetune", "--model", str(root / "model"), "--train",
            str(root / "train.tsv"), "--dev", str(root / "dev.tsv"), "--out", str(out), "--epochs", "30",
            "--batch-size", "4", "--lr", "1e-3", "--save-every", "7", "--keep", "2", "--quiet", "--device", "cpu",
            *extra]


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, check=False, **kw)


@pytest.fixture(scope="module")
def reference(setup):
    out = setup / "alone"
    proc = run(finetune_cmd(setup, out))
    assert proc.returncode == 0, proc.stderr
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs after resume"  # bit-identical


def test_sigkill_at_an_arbitrary_moment_then_resume_is_bit_identical(setup, reference):
    out = setup / "killed"
    proc = subprocess.Popen(finetune_cmd(setup, out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    # wait for the second checkpoint, then kill without warning, wherever the run is
    while len(state.checkpoint_dirs(out)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists()  # it really stopped before the end
    resumed = run(finetune_cmd(setup, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert_same_weights(reference, out)
    # the resumed log is the uninterrupted run's log (no duplicated or missing lines)
    def lines(p):
        return [{k: v for k, v in json.loads(x).items() if k != "examples_per_s"}
                for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert lines(out) == lines(reference)
    assert len(state.checkpoint_dirs(out)) == 2  # --keep 2 pruned the older ones


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(setup, reference):
    out = setup / "interrupted"
    proc = subprocess.Popen(finetune_cmd(setup, out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    while not state.checkpoint_dirs(out) and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "continue with --resume" in err and "Traceback" not in err
    resumed = run(finetune_cmd(setup, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(reference, out)


def test_resume_refuses_another_run_and_missing_checkpoints(setup, reference, tmp_path):
    proc = run(finetune_cmd(setup, reference, "--resume") + ["--lr", "2e-3"])
    assert proc.returncode == 1 and "different run" in proc.stderr and "lr" in proc.stderr
    proc = run(finetune_cmd(setup, tmp_path / "empty", "--resume"))
    assert proc.returncode == 1 and "no resumable run" in proc.stderr
    before = (reference / "model.safetensors").read_bytes()
    proc = run(finetune_cmd(setup, reference))  # a new run into a directory holding one
    assert proc.returncode == 1 and "already holds a finished run" in proc.stderr
    assert (reference / "model.safetensors").read_bytes() == before  # nothing overwritten


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(setup, reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    newest, previous = state.checkpoint_dirs(out)[-1], state.checkpoint_dirs(out)[-2]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # cut short on disk
    from minift.models import BertForSequenceClassification
    from minift.optim import AdamW, param_groups
    from minift.optim.schedules import make_scheduler

    model = BertForSequenceClassification.from_pretrained(out)
    opt = AdamW(param_groups(model, 0.01), lr=1e-3)
    sched = make_scheduler(opt, "linear", warmup_steps=1, total_steps=10)
    with pytest.warns(UserWarning, match="damaged"):
        restored = state.resume(out, model=model, optimizer=opt, scheduler=sched)
    assert restored["folder"] == str(previous)
    assert newest.exists()  # reported and passed over, not deleted


def test_a_kill_during_a_save_leaves_the_previous_checkpoint(setup, reference, tmp_path, monkeypatch):
    import shutil

    from minift.models import BertForSequenceClassification
    from minift.optim import AdamW, param_groups
    from minift.optim.schedules import make_scheduler

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = [p.name for p in state.checkpoint_dirs(out)]
    model = BertForSequenceClassification.from_pretrained(out)
    opt = AdamW(param_groups(model, 0.01), lr=1e-3)
    sched = make_scheduler(opt, "linear", warmup_steps=1, total_steps=10)

    def dies(*a, **k):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(state, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        state.save_checkpoint(out, model=model, optimizer=opt, scheduler=sched,
                              progress={"step": 999, "epoch": 1, "batch": 0}, keep=2)
    assert [p.name for p in state.checkpoint_dirs(out)] == before
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no half folder
    monkeypatch.undo()
    state.resume(out, model=model, optimizer=opt, scheduler=sched)  # still loads


def test_optimizer_and_rng_state_round_trip_without_pickle(tmp_path):
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    from minift.optim import AdamW

    opt = AdamW(lin.parameters(), lr=1e-2, betas=(0.8, 0.9))
    lin(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = state.optimizer_state(opt)
    json.dumps(meta)  # plain JSON, no pickle
    opt2 = AdamW(torch.nn.Linear(3, 2).parameters(), lr=1.0)
    state.set_optimizer_state(opt2, tensors, json.loads(json.dumps(meta)))
    assert opt2.param_groups[0]["betas"] == (0.8, 0.9) and opt2.param_groups[0]["lr"] == 1e-2
    for a, b in zip(opt.state.values(), opt2.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    rng_tensors, rng_meta = state.rng_state()
    expected = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    state.set_rng_state(rng_tensors, json.loads(json.dumps(rng_meta)))
    again = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]
