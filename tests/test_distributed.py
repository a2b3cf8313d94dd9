"""torchrun + DistributedDataParallel on the CPU (gloo): P processes train the model one process trains.

For a given seed, global step t sees the same examples whatever P is (minift/data/sampler.py), and the
loop weighs each process's loss by its share of the global units (minift/train/objective.py), so two
processes with batch 4 end where one process with batch 8 ends. Dropout is off (each process draws its
own masks); the remaining difference is the order in which float32 gradients are summed (all-reduce
vs one batch): tolerance 1e-6 on every weight after 4 steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests_support import write_tiny_bert, write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-6  # float32 weights; only the summation order of the gradients differs


def _finetune(out: Path, model: Path, data: Path, *, processes: int, batch_size: int, extra=()) -> dict:
    base = [sys.executable, "-m", "minift"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m", "minift"]
    cmd = [*base, "finetune", "--model", str(model), "--train", str(data / "train.tsv"), "--dev",
           str(data / "dev.tsv"), "--out", str(out), "--max-steps", "4", "--batch-size", str(batch_size),
           "--lr", "1e-3", "--seed", "3", "--device", "cpu", "--quiet", "--attn-impl", "eager", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout  # one result line, from rank 0 only
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    model = write_tiny_bert(root / "tiny", dropout=0.0)
    data = root / "data"
    data.mkdir()
    write_tiny_dataset(data / "train.tsv", 40, seed=1)
    write_tiny_dataset(data / "dev.tsv", 12, seed=2)
    single = root / "single"
    result = _finetune(single, model, data, processes=1, batch_size=8)
    return root, model, data, load_file(str(single / "model.safetensors")), result


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize("batch_size,grad_accum", [(4, 1), (2, 2)])
def test_two_processes_end_where_one_ends(setup, batch_size, grad_accum):
    root, model, data, single, single_result = setup
    out = root / f"ddp-{batch_size}x{grad_accum}"
    result = _finetune(out, model, data, processes=2, batch_size=batch_size,
                       extra=("--grad-accum", str(grad_accum)))
    assert result["processes"] == 2 and result["steps"] == single_result["steps"] == 4
    start = load_file(str(model / "model.safetensors"))
    ddp = load_file(str(out / "model.safetensors"))
    moved = max((ddp["bert." + k] - v).abs().max().item() for k, v in start.items())  # BertModel names
    assert moved > 1e-3  # training did change the encoder
    assert _max_diff(single, ddp) <= TOL
    # rank 0 alone wrote the log: one line per event, no duplicates from rank 1
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "eval"] == [0, 1]
    assert result["dev_accuracy"] == pytest.approx(single_result["dev_accuracy"], abs=1e-12)


def test_mismatched_global_batch_is_a_different_run(setup):
    """Negative control: two processes with batch 8 take a global batch of 16 and end elsewhere."""
    root, model, data, single, _ = setup
    out = root / "ddp-8"
    _finetune(out, model, data, processes=2, batch_size=8)
    assert _max_diff(single, load_file(str(out / "model.safetensors"))) > 1e-4


def test_world_from_environment(monkeypatch):
    from minift.train.distributed import from_environment

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    world = from_environment()
    assert (world.rank, world.world_size, world.enabled, world.is_main) == (2, 4, True, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4 is not in"):
        from_environment()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="must be integers"):
        from_environment()


def test_single_process_is_a_no_op():
    from minift.train.distributed import Distributed

    world = Distributed()
    model = torch.nn.Linear(2, 2)
    assert world.wrap(model, torch.device("cpu")) is model
    assert world.sum(2.5, torch.device("cpu")) == 2.5 and world.is_main and not world.enabled


@pytest.mark.parametrize("n,batch_size,world_size", [(40, 4, 2), (40, 4, 3), (13, 2, 4), (101, 8, 3), (7, 1, 5)])
def test_processes_split_each_global_batch_of_the_single_process_run(n, batch_size, world_size):
    """Global step t of P processes with batch B holds exactly the examples of step t of one process with
    batch B * P, in the same order; no process gets an empty slice; slices differ in size by at most 1."""
    from minift.data.sampler import EpochBatchSampler

    single = EpochBatchSampler(n, batch_size * world_size, shuffle=True, seed=11)
    ranks = [EpochBatchSampler(n, batch_size, shuffle=True, seed=11, rank=r, world_size=world_size)
             for r in range(world_size)]
    for epoch in (1, 2):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        per_rank = [list(s) for s in ranks]
        whole = list(single)
        assert all(len(p) == len(ranks[0]) for p in per_rank)
        for t, parts in enumerate(zip(*per_rank)):
            sizes = [len(p) for p in parts]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
            assert [i for p in parts for i in p] == whole[t]
        # a last global batch with fewer examples than processes is dropped (not split into empties)
        assert len(whole) - len(per_rank[0]) in (0, 1)
