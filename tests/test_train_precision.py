"""Mixed precision through `train()` itself, not only its parts (minift/train/loop.py, precision.py).

- bf16: the loop's forward really runs under autocast: the matmuls inside a training step produce
  bfloat16 (a loop whose autocast silently did nothing would train in float32 and pass every other test).
- Loss scaling: fp16 autocast needs CUDA, but the `LossScaler` the loop drives does not. Here an
  enabled scaler runs with float32 compute on the CPU, so every claim is checked exactly: powers of two
  scale and unscale float32 gradients without rounding, so a scaled run must end on the *same bits* as
  an unscaled one; an injected inf gradient skips that step (weights, AdamW's moments and the schedule
  untouched) and halves the scale; gradients are unscaled before clipping (else the clipped norm is off
  by the scale); the scaler's state is saved with a checkpoint and resumes.
"""

import json

import pytest
import torch
import transformers

from minift.data import make_loader
from minift.models import BertForSequenceClassification
from minift.optim import AdamW, param_groups
from minift.optim.schedules import make_scheduler
from minift.train import loop
from minift.train.loop import TrainArgs, train
from minift.train.precision import LossScaler

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only costs
INIT_SCALE = 2.0**10


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=97, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                                     intermediate_size=37, max_position_embeddings=40, num_labels=3,
                                     hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def _data():
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(5, 97, (24, 9), generator=g), torch.randint(0, 3, (24,), generator=g)

    def collate(rows: list[int]) -> dict:
        index = torch.tensor(rows)
        return {"input_ids": ids[index], "attention_mask": torch.ones_like(ids[index]), "labels": labels[index]}

    return make_loader(list(range(24)), collate, batch_size=4, shuffle=True, seed=3)  # 6 steps an epoch


def _setup(checkpoint):
    torch.manual_seed(1)  # the same head and dropout masks in every run
    model = BertForSequenceClassification.from_pretrained(checkpoint)
    optimizer = AdamW(param_groups(model, 0.01), lr=3e-3)
    scheduler = make_scheduler(optimizer, "linear", warmup_steps=2, total_steps=6)
    return model, optimizer, scheduler, _data()


def _records(path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == "train"]


def _run(checkpoint, tmp_path, name, *, scaler=False, inf_at=(), max_norm=0.05, monkeypatch=None, **kwargs):
    """One run of `train`; with scaler=True an enabled LossScaler (fp32 compute) replaces the loop's;
    inf_at: the steps (1-based) whose gradient of one weight is replaced by inf."""
    if scaler:
        monkeypatch.setattr(loop, "make_loss_scaler",
                            lambda precision: LossScaler(init_scale=INIT_SCALE, growth_interval=3))
    model, optimizer, scheduler, loader = _setup(checkpoint)
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return torch.full_like(grad, float("inf")) if calls["n"] in inf_at else grad

    model.classifier.weight.register_hook(poison)
    log = tmp_path / f"{name}.jsonl"
    args = TrainArgs(epochs=1, max_grad_norm=max_norm, log_every=1, progress=False, **kwargs.pop("args", {}))
    summary = train(model, optimizer, scheduler, loader, device=CPU, args=args, log_path=log, **kwargs)
    return model, optimizer, scheduler, summary, _records(log)


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_bf16_autocast_reaches_the_matmuls_inside_a_training_step(checkpoint, tmp_path):
    seen = {}
    for precision in ("fp32", "bf16"):
        model, optimizer, scheduler, loader = _setup(checkpoint)
        dtypes = []
        model.bert.encoder.layer[0].attention.self.query.register_forward_hook(
            lambda module, args, out, dtypes=dtypes: dtypes.append(out.dtype))
        train(model, optimizer, scheduler, loader, device=CPU, log_path=tmp_path / f"{precision}.jsonl",
              args=TrainArgs(epochs=1, max_steps=2, progress=False, precision=precision))
        assert dtypes, "the hooked layer never ran"
        seen[precision] = (set(dtypes), model)
    assert seen["fp32"][0] == {torch.float32}
    assert seen["bf16"][0] == {torch.bfloat16}, "bf16 training ran its matmuls in float32: autocast did nothing"
    assert next(seen["bf16"][1].parameters()).dtype == torch.float32  # the weights stay float32 (lesson 20)
    assert not _same_weights(seen["fp32"][1], seen["bf16"][1])


def test_an_enabled_loss_scaler_changes_no_bit_of_a_clean_run(checkpoint, tmp_path, monkeypatch):
    """Scaling by 2^10 and unscaling are exact in float32: the same weights and logged gradient norms as
    the unscaled run. max_norm 0.05 clips every step, so clipping the still-scaled gradients (unscaling
    only inside step) would show: the logged norm 1024x too large, the update 1024x too small."""
    plain, *_, plain_records = _run(checkpoint, tmp_path, "plain")
    scaled, *_, records = _run(checkpoint, tmp_path, "scaled", scaler=True, monkeypatch=monkeypatch)
    assert [r["grad_norm"] for r in records] == [r["grad_norm"] for r in plain_records]
    assert all(r["grad_norm"] > 0.05 for r in records)  # every step was clipped
    assert [r["loss"] for r in records] == [r["loss"] for r in plain_records]
    assert _same_weights(plain, scaled)
    # 3 clean steps in a row grow the scale (growth_interval=3): 2^10 for steps 1-2, 2^11 after step 3
    assert [r["loss_scale"] for r in records] == [INIT_SCALE] * 2 + [2 * INIT_SCALE] * 3 + [4 * INIT_SCALE]


def test_an_inf_gradient_skips_the_step_and_the_schedule(checkpoint, tmp_path, monkeypatch):
    """An inf gradient at step 3 changes nothing (weights, AdamW's moments, the schedule): after the
    skipped step 3 the run is where a 2-step run ends, and the scale is halved."""
    two, opt2, sched2, _, _ = _run(checkpoint, tmp_path, "two", scaler=True, monkeypatch=monkeypatch,
                                   args={"max_steps": 2})
    three, opt3, sched3, _, records = _run(checkpoint, tmp_path, "three", scaler=True, monkeypatch=monkeypatch,
                                           inf_at=(3,), args={"max_steps": 3})
    assert _same_weights(two, three)
    assert sched3.last_epoch == sched2.last_epoch == 2  # the schedule did not advance on the skipped step
    assert all(torch.equal(opt3.state[p]["exp_avg"], opt2.state[q]["exp_avg"])
               for p, q in zip(three.parameters(), two.parameters()) if p in opt3.state)
    assert [r["loss_scale"] for r in records] == [INIT_SCALE, INIT_SCALE, INIT_SCALE / 2]  # backed off


def test_the_scaler_state_is_saved_and_resumes(checkpoint, tmp_path, monkeypatch):
    """6 steps straight (an overflow at step 3, growth at step 6) against 4 steps, then a resume to 6 from
    the checkpoint at step 4 with a fresh scaler: the same log and the same weights, bit for bit."""
    straight, *_, whole = _run(checkpoint, tmp_path, "straight", scaler=True, monkeypatch=monkeypatch,
                               inf_at=(3,), run_dir=tmp_path / "a", args={"save_every": 4})
    _run(checkpoint, tmp_path, "first", scaler=True, monkeypatch=monkeypatch, inf_at=(3,),
         run_dir=tmp_path / "b", args={"save_every": 4, "max_steps": 4})
    resumed, *_ = _run(checkpoint, tmp_path, "first", scaler=True, monkeypatch=monkeypatch,
                       run_dir=tmp_path / "b", resume=True, args={"save_every": 4})
    records = _records(tmp_path / "first.jsonl")
    # overflow at step 3: halved; 3 clean steps later (step 6) grown again. A resume that lost the scale
    # (or its count of clean steps) logs something else at step 5 (or 6).
    assert [r["loss_scale"] for r in whole] == [INIT_SCALE] * 2 + [INIT_SCALE / 2] * 3 + [INIT_SCALE]
    assert [r["loss_scale"] for r in records] == [r["loss_scale"] for r in whole]
    assert [r["loss"] for r in records] == [r["loss"] for r in whole]
    assert _same_weights(straight, resumed)
