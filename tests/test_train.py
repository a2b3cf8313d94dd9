"""The training loop against a plain transformers + torch loop, and the CLI end to end.

The reference loop is the one the issue's reference figures come from: transformers'
BertForSequenceClassification, torch.optim.AdamW (no decay on biases and LayerNorm),
transformers' get_linear_schedule_with_warmup, torch.nn.utils.clip_grad_norm_. minift's loop, with its
hand-written model, loss, AdamW, schedule and clipping, must end on the same weights.
"""

import json
import math

import pytest
import torch
import transformers

from minift.data import make_loader
from minift.models import BertForSequenceClassification
from minift.optim import AdamW, param_groups
from minift.optim.schedules import make_scheduler
from minift.train.loop import TrainArgs, TrainingError, train, train_simple
from minift.train.tasks.classification import evaluate

transformers.logging.set_verbosity_error()
CPU = torch.device("cpu")


def tiny_config(**kw) -> transformers.BertConfig:
    base = {"vocab_size": 97, "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 3,
            "intermediate_size": 37, "max_position_embeddings": 40, "type_vocab_size": 2, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "num_labels": 3}
    return transformers.BertConfig(**{**base, **kw})


def random_batches(n: int, batch_size: int, seq_len: int, vocab: int, num_labels: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (batch_size, seq_len), generator=g)
        lengths = torch.randint(2, seq_len + 1, (batch_size,), generator=g)
        mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
        batches.append({"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                        "labels": torch.randint(0, num_labels, (batch_size,), generator=g)})
    return batches


def reference_run(model, batches, lr, weight_decay, warmup, max_norm):
    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    groups = [{"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
               "weight_decay": weight_decay},
              {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
               "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, foreach=False)
    sched = transformers.get_linear_schedule_with_warmup(opt, warmup, len(batches))
    model.train()
    losses = []
    for b in batches:
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("seed,max_norm", [(0, 1.0), (1, 0.05), (2, 100.0)])
def test_loop_ends_on_the_weights_of_the_reference_loop(tmp_path, seed, max_norm):
    """8 steps, float64: every parameter within 1e-10 of the reference loop's. Float64 makes the
    comparison about the algorithm (rounding differences between hand-written and fused kernels
    are ~1e-16 per op); max_norm 0.05 forces clipping on every step, 100 never clips."""
    torch.manual_seed(seed)
    ref = transformers.BertForSequenceClassification(tiny_config()).double()
    ref.save_pretrained(tmp_path)
    ours = BertForSequenceClassification.from_pretrained(tmp_path).double()
    batches = random_batches(8, 4, 11, 97, 3, seed)
    lr, wd, warmup = 3e-3, 0.01, 2

    ref_losses = reference_run(ref, batches, lr, wd, warmup, max_norm)
    optimizer = AdamW(param_groups(ours, wd), lr=lr, weight_decay=wd)
    scheduler = make_scheduler(optimizer, "linear", warmup_steps=warmup, total_steps=len(batches))
    log = tmp_path / "metrics.jsonl"
    summary = train(ours, optimizer, scheduler, batches, device=CPU,
                    args=TrainArgs(epochs=1, max_grad_norm=max_norm, log_every=1, progress=False), log_path=log)

    assert summary["steps"] == len(batches)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["loss"] for r in records] == pytest.approx(ref_losses, abs=1e-10)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        diff = (p - ref_params[name]).abs().max().item()
        assert diff <= 1e-10, f"{name}: max abs diff {diff:.3g} after {len(batches)} steps"
    # the learning rate followed the schedule: warmup to lr at step 2, then linear decay to 0
    assert records[1]["lr"] == pytest.approx(lr * (1 - 0 / 6), rel=1e-12)
    assert records[-1]["lr"] == pytest.approx(0.0, abs=1e-15)


def test_train_simple_and_train_end_on_the_same_weights(tmp_path):
    """The loop of lesson 12 (`train_simple`) and `train` without its extras (fp32, one micro-batch per
    step, one process, no evaluation) take the same steps: same seed, same batches from the same seeded
    loader, dropout on. Bitwise equal, no tolerance: the same operations run in the same order, and the
    extras (log, progress bar) only read the numbers. Forgetting zero_grad or the scheduler step in
    either loop breaks it."""
    torch.manual_seed(0)
    config = tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path)
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(5, 97, (20, 9), generator=g), torch.randint(0, 3, (20,), generator=g)

    def collate(rows: list[int]) -> dict:
        index = torch.tensor(rows)
        return {"input_ids": ids[index], "attention_mask": torch.ones_like(ids[index]), "labels": labels[index]}

    def setup():
        torch.manual_seed(1)  # the same dropout masks in both runs
        model = BertForSequenceClassification.from_pretrained(tmp_path)
        optimizer = AdamW(param_groups(model, 0.01), lr=3e-3)
        scheduler = make_scheduler(optimizer, "linear", warmup_steps=2, total_steps=10)
        loader = make_loader(list(range(20)), collate, batch_size=4, shuffle=True, seed=3)  # 5 steps an epoch
        return model, optimizer, scheduler, loader

    simple, optimizer, scheduler, loader = setup()
    losses = train_simple(simple, optimizer, scheduler, loader, device=CPU, epochs=2, max_grad_norm=0.5)
    full, optimizer, scheduler, loader = setup()
    train(full, optimizer, scheduler, loader, device=CPU, log_path=tmp_path / "metrics.jsonl",
          args=TrainArgs(epochs=2, max_grad_norm=0.5, log_every=1, progress=False))

    assert len(losses) == 10
    assert [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == losses
    start = BertForSequenceClassification.from_pretrained(tmp_path).state_dict()
    for (name, a), b in zip(simple.state_dict().items(), full.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs between train_simple and train"
    assert any(not torch.equal(start[name], a) for name, a in simple.state_dict().items())  # it trained


def test_max_steps_overrides_epochs(tmp_path):
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(tiny_config()).save_pretrained(tmp_path)
    model = BertForSequenceClassification.from_pretrained(tmp_path)
    batches = random_batches(4, 2, 7, 97, 3, 0)
    opt = AdamW(model.parameters(), lr=1e-3)
    sched = make_scheduler(opt, "linear", warmup_steps=0, total_steps=6)
    summary = train(model, opt, sched, batches, device=CPU, args=TrainArgs(epochs=100, max_steps=6, progress=False))
    assert summary["steps"] == 6  # one full epoch of 4 and 2 steps of the second


def test_evaluation_before_and_after_each_epoch_and_best_checkpoint(tmp_path):
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(tiny_config()).save_pretrained(tmp_path)
    model = BertForSequenceClassification.from_pretrained(tmp_path)
    batches = random_batches(3, 4, 9, 97, 3, 1)
    id2label = {0: "a", 1: "b", 2: "c"}
    opt = AdamW(model.parameters(), lr=1e-2)
    sched = make_scheduler(opt, "constant", warmup_steps=0, total_steps=9)
    saved = []
    summary = train(model, opt, sched, batches, device=CPU, args=TrainArgs(epochs=3, progress=False),
                    evaluate_fn=lambda: evaluate(model, batches, CPU, id2label), save_best=saved.append)
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert summary["before"]["examples"] == 12
    accs = [summary["before"]["accuracy"]] + [h["accuracy"] for h in summary["history"]]
    # save_best is called exactly when the dev accuracy reaches a new maximum
    best_so_far, expected_saves = -math.inf, 0
    for a in accs[1:]:
        if a > best_so_far:
            best_so_far, expected_saves = a, expected_saves + 1
    assert len(saved) == expected_saves
    assert summary["best"]["accuracy"] == max(accs[1:])
    # evaluation accuracy equals a direct computation
    model.eval()
    with torch.no_grad():
        direct = sum((model(**b).logits.argmax(-1) == b["labels"]).sum().item() for b in batches) / 12
    assert evaluate(model, batches, CPU, id2label)["accuracy"] == direct


def test_nan_loss_stops_with_the_step_named(tmp_path):
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(tiny_config()).save_pretrained(tmp_path)
    model = BertForSequenceClassification.from_pretrained(tmp_path)
    batches = random_batches(3, 2, 5, 97, 3, 0)
    opt = AdamW(model.parameters(), lr=1e-3)
    sched = make_scheduler(opt, "constant", warmup_steps=0, total_steps=3)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="at step 1"):
        train(model, opt, sched, batches, device=CPU, args=TrainArgs(epochs=1, progress=False))
