"""minift/train/memory.py: the counter of live tensor bytes, the extrapolation from two probe passes,
the estimate against the peak a training run measures, and what a run says when memory is short."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests_support import write_tiny_bert, write_tiny_dataset

from minift.cli import main
from minift.models import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel
from minift.train import memory
from minift.train.memory import (
    LiveBytes,
    MemoryEstimate,
    OutOfMemory,
    count_step,
    extrapolate,
    warn_if_too_large,
)
from minift.train.objective import Objective

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_live_bytes_counts_each_storage_once_until_it_is_freed():
    with LiveBytes() as counter:
        a = torch.empty(1000)  # 4,000 bytes
        view = a[10:20]  # the same storage: nothing more
        assert counter.live == 4000
        b = a * 2  # a new storage
        assert counter.live == 8000
        c = torch.empty(10, dtype=torch.bfloat16)
        assert counter.live == 8020
        del b, c
        assert counter.live == 4000  # freed when its last tensor goes
        del view
        assert counter.live == 4000  # a is alive
        del a
        torch.zeros(3)  # one more operation, freed at once
    assert counter.live == 0 and counter.peak == 8020


def bert(seed: int, hidden: int = 32, layers: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig.from_dict({
        "vocab_size": 99, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 4,
        "intermediate_size": 2 * hidden, "max_position_embeddings": 64, "num_labels": 3})).train()


def gpt2(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config.from_dict({"vocab_size": 301, "n_embd": 32, "n_layer": 2, "n_head": 4,
                                                 "n_positions": 64})).train()


def classify_batch(n: int, length: int) -> dict:
    gen = torch.Generator().manual_seed(n)
    return {"input_ids": torch.randint(1, 99, (n, length), generator=gen),
            "attention_mask": torch.ones(n, length, dtype=torch.long), "labels": torch.randint(0, 3, (n,), generator=gen)}


def lm_batch(n: int, length: int) -> dict:
    ids = torch.randint(0, 301, (n, length), generator=torch.Generator().manual_seed(n))
    return {"input_ids": ids, "labels": ids.clone()}


CASES = [  # (model, batch maker, loss unit, length, target batch size, precision)
    (bert, classify_batch, "examples", 24, 9, "fp32"),
    (bert, classify_batch, "examples", 40, 16, "bf16"),
    (gpt2, lm_batch, "next-tokens", 32, 7, "fp32"),
    (gpt2, lm_batch, "next-tokens", 16, 12, "bf16"),
    # wide and short: at 2 and 3 examples the peak is the gradients at the end of the backward pass, at
    # 64 the activations early in it, so extrapolating the two maxima would be wrong
    (lambda seed: bert(seed, hidden=128), classify_batch, "examples", 4, 64, "fp32"),
]


@pytest.mark.parametrize("build, make, unit, length, batch_size, precision", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_two_probes_give_the_count_at_the_runs_batch_size(build, make, unit, length, batch_size, precision, seed):
    """Every count along the pass is a + b x B: the probes at 2 and 3 examples give the count at B
    exactly, the same as counting a pass at B itself."""
    model, loss_fn = build(seed), Objective(unit).loss
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else torch.no_grad
    if precision == "fp32":
        autocast = torch.enable_grad
    counts = {}
    for n in (2, 3, batch_size):
        with autocast():
            counts[n] = count_step(model, loss_fn, make(n, length))
    assert all(p.grad is None for p in model.parameters())  # the probes leave no gradient behind
    direct = max(counts[batch_size])
    assert extrapolate(counts[2], counts[3], (2, 3), batch_size) == pytest.approx(direct, rel=1e-6)
    assert direct > max(counts[3])


def test_extrapolation_falls_back_to_the_maxima_when_the_passes_differ():
    assert extrapolate([0, 10, 4], [0, 12, 6, 1], (2, 3), 12) == 10 + 2 * 10


class Source:  # what estimate() reads of a DataLoader
    def __init__(self, make, length):
        self.dataset = ["short", "the longest example"]
        self.collate_fn = lambda examples: make(len(examples), length)


def test_estimate_leaves_the_random_state_and_the_model_as_they_were():
    model = bert(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    state = torch.get_rng_state()
    est = memory.estimate(model, Objective("examples").loss, Source(classify_batch, 24), device=torch.device("cpu"),
                          autocast=torch.enable_grad(), precision="fp32", batch_size=8)
    assert torch.equal(torch.get_rng_state(), state)  # dropout drew masks inside; the run draws the same
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training
    trainable = sum(p.numel() for p in model.parameters())
    assert est.optimizer == 8 * trainable  # m and v, float32
    assert est.batch == (8, 24) and est.step > 4 * trainable  # at least the gradients
    bf16 = memory.estimate(model, Objective("examples").loss, Source(classify_batch, 24), device=torch.device("cpu"),
                           autocast=torch.autocast("cpu", dtype=torch.bfloat16), precision="bf16", batch_size=64)
    fp32 = memory.estimate(model, Objective("examples").loss, Source(classify_batch, 24), device=torch.device("cpu"),
                           autocast=torch.enable_grad(), precision="fp32", batch_size=64)
    assert bf16.step < fp32.step  # activations in half the bytes
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the estimate extrapolated, counted directly
        direct = max(count_step(model, Objective("examples").loss, classify_batch(64, 24)))
    assert bf16.step == pytest.approx(direct, rel=1e-6)


def test_probes_leave_a_random_collate_where_it_was(minilm_dir):
    """The probe batches are built with the run's own collate; a masked-LM collate draws its masks from
    a generator of its own, and another collate might use torch's: after the probes, the run's first
    batch is the one it would have drawn without them."""
    from torch.utils.data import DataLoader

    from minift.data.lm import MLMCollate, encode_documents
    from minift.tokenizer import WordPieceTokenizer

    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    sequences = encode_documents(tok, ["The cat sat on the mat.", "Masked language models read both ways."] * 4,
                                 add_special_tokens=True)

    def global_collate(rows):  # draws from torch's and Python's global generators
        return {"input_ids": torch.tensor([r + [0] * (12 - len(r)) for r in rows])[:, :12], "noise": torch.rand(len(rows)),
                "shuffled": torch.tensor(random.sample(range(len(rows)), len(rows)))}

    for make in (lambda: MLMCollate(tok, seed=5), lambda: global_collate):
        torch.manual_seed(0), random.seed(0)
        expected = next(iter(DataLoader(sequences, batch_size=4, collate_fn=make())))
        torch.manual_seed(0), random.seed(0)
        loader = DataLoader(sequences, batch_size=4, collate_fn=make())
        memory.probe_batches(loader)
        first = next(iter(loader))
        assert all(torch.equal(first[k], expected[k]) for k in expected)


def test_the_peak_is_the_processs_own_not_its_parents():
    """A process started by a large one (a test suite, a notebook, a benchmark holding models) reports
    its own peak: Linux carries ru_maxrss across execve, which made a small child report its parent's
    size. Here the parent holds 1 GiB more than the child ever touches."""
    held = bytearray(2**30)
    held[:: 4096] = b"\x01" * len(range(0, 2**30, 4096))  # touch every page: resident, not just reserved
    code = "from minift.train.memory import peak_resident_bytes, resident_bytes; print(peak_resident_bytes(), resident_bytes())"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    peak, now = map(int, done.stdout.split())
    assert now <= peak < 2**30 < memory.resident_bytes(), (peak, now)
    del held


def test_the_estimate_is_within_20_percent_of_the_measured_peak():
    """benchmarks/memory.py's child process on the real MiniLM (a small batch, to keep the suite
    fast): the estimate printed before the first step against the peak resident memory after 6 steps.
    benchmarks/memory.py runs the larger MiniLM and GPT-2 small shapes README shows."""
    if not (REPO / "weights" / "sentence-transformers--all-MiniLM-L6-v2" / "model.safetensors").exists():
        pytest.skip("all-MiniLM-L6-v2 not in weights/ (make weights)")
    done = subprocess.run([sys.executable, "benchmarks/memory.py", "--child", "minilm:8x64:fp32", "--steps", "6"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.8 <= r["estimate"] / r["peaks"][-1] <= 1.2, r


def test_a_run_that_does_not_fit_is_warned_before_its_first_step():
    est = MemoryEstimate(device="cpu", now=2**30, optimizer=2**29, step=2**30, heap_factor=1.25,
                         heap_constant=2**28, batch=(32, 128), precision="fp32")
    assert est.peak == 2**30 + 2**29 + 1.25 * 2**30 + 2**28
    assert warn_if_too_large(est, available=5 * 2**29) is None  # needs 2 GiB more than now, 2.5 GiB are free
    warning = warn_if_too_large(est, available=2**30)
    for needed in ("3.00 GiB", "2.00 GiB more", "only 1.00 GiB", "--batch-size", "--grad-accum", "--max-length",
                   "--precision bf16", "--peft lora"):
        assert needed in warning, needed
    assert warn_if_too_large(est, available=None) is None  # unknown: nothing to say


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    model = write_tiny_bert(root / "tiny", dropout=0.1)
    write_tiny_dataset(root / "train.tsv", 24, seed=1)
    write_tiny_dataset(root / "dev.tsv", 8, seed=2)
    return root, model


def finetune(root: Path, model: Path, out: str) -> list[str]:
    return ["finetune", "--model", str(model), "--train", str(root / "train.tsv"), "--dev", str(root / "dev.tsv"),
            "--out", str(root / out), "--batch-size", "8", "--max-steps", "2", "--device", "cpu"]


def test_finetune_prints_the_estimate_and_records_the_measured_peak(capsys, tiny):
    root, model = tiny
    assert main(finetune(root, model, "fits")) == 0
    captured = capsys.readouterr()
    assert "estimated peak memory" in captured.out + captured.err
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert 0 < result["estimated_peak_bytes"] and 0 < result["peak_bytes"]


def test_finetune_warns_when_the_estimate_exceeds_the_available_memory(capsys, tiny, monkeypatch):
    root, model = tiny
    monkeypatch.setattr("minift.train.finetune.available_memory", lambda device: 1024)
    assert main(finetune(root, model, "short")) == 0
    captured = capsys.readouterr()
    assert "but only 0.00 GiB is available on cpu" in captured.out + captured.err


def test_an_out_of_memory_error_says_what_to_change(capsys, tiny, monkeypatch):
    """On CUDA torch raises OutOfMemoryError (on a CPU the kernel kills the process instead, hence the
    warning above): the run stops with one sentence naming the flags that lower the peak."""
    root, model = tiny

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0)")
    monkeypatch.setattr("minift.train.finetune.train", oom)
    assert main(finetune(root, model, "oom")) == 1
    err = capsys.readouterr().err
    assert "ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB" in err
    assert "--batch-size" in err and "--grad-accum" in err and "The run needs about" in err
    assert OutOfMemory.__mro__[1] is RuntimeError
