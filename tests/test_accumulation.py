"""Gradient accumulation: K micro-batches of b give the update of one batch of K*b (lesson 21).

Everything runs in float64 with dropout off, so the only differences between the two runs are the
order of floating-point sums (padding to another length, adding K gradients instead of one):
tolerance 1e-10 on every weight after several steps. The negative controls show the test can fail:
weighting each micro-batch by 1/K instead of by its share of the units moves the weights by far more.
"""

from __future__ import annotations

import pytest
import torch

from minift.data import make_loader
from minift.models.bert import BertConfig, BertForSequenceClassification, BertForTokenClassification
from minift.models.gpt2 import GPT2Config, GPT2LMHeadModel
from minift.optim import AdamW
from minift.optim.schedules import make_scheduler
from minift.train.loop import TrainArgs, total_steps, train
from minift.train.objective import Objective, balanced_weights, parse_class_weights

TOL = 1e-10  # float64: only summation order differs


def _bert_config(num_labels: int) -> BertConfig:
    return BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=40, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, num_labels=num_labels)


def _rows(n: int, seed: int, *, token_labels: bool, num_labels: int) -> list[dict]:
    """Variable-length rows; token labels have a varying number of -100 (so micro-batches carry very
    different numbers of scored tokens, which is what normalising by tokens is about)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(3, 20, (1,), generator=g))
        ids = torch.randint(1, 50, (length,), generator=g)
        if token_labels:
            labels = torch.randint(0, num_labels, (length,), generator=g)
            labels[torch.rand(length, generator=g) < float(torch.rand(1, generator=g))] = -100
            labels[0] = int(torch.randint(0, num_labels, (1,), generator=g))  # at least one scored token
        else:
            labels = torch.randint(0, num_labels, (), generator=g)
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def _collate(rows: list[dict]) -> dict:
    """Right padding to the longest row of this (micro-)batch: a micro-batch pads less than the big batch."""
    T = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    token_level = rows[0]["labels"].dim() == 1
    labels = torch.full((len(rows), T), -100, dtype=torch.long) if token_level else torch.stack(
        [r["labels"] for r in rows])
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], mask[i, :n] = r["input_ids"], 1
        if token_level:
            labels[i, :n] = r["labels"]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _run(make_model, rows, *, batch_size: int, grad_accum: int, objective: Objective, steps: int = 3):
    torch.manual_seed(0)
    model = make_model().double()
    loader = make_loader(rows, _collate, batch_size=batch_size, shuffle=True, seed=7)
    args = TrainArgs(max_steps=steps, grad_accum=grad_accum, progress=False, max_grad_norm=1.0)
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    scheduler = make_scheduler(optimizer, "linear", warmup_steps=1, total_steps=total_steps(args, len(loader)))
    train(model, optimizer, scheduler, loader, device=torch.device("cpu"), args=args, objective=objective)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


CASES = {
    "sequence-classification": (lambda: BertForSequenceClassification(_bert_config(3)), False, "examples"),
    "token-classification": (lambda: BertForTokenClassification(_bert_config(4)), True, "tokens"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_four_micro_batches_of_8_equal_one_batch_of_32(case, seed):
    make_model, token_labels, unit = CASES[case]
    rows = _rows(96, seed, token_labels=token_labels, num_labels=4 if token_labels else 3)
    one = _run(make_model, rows, batch_size=32, grad_accum=1, objective=Objective(unit))
    four = _run(make_model, rows, batch_size=8, grad_accum=4, objective=Objective(unit))
    start = {k: v for k, v in make_model().double().state_dict().items()}
    assert _max_diff(one, start) > 1e-3  # the runs did move the weights
    assert _max_diff(one, four) <= TOL


def test_token_loss_weighted_by_examples_is_wrong():
    """Negative control: averaging the micro-batch means (each 1/K) is not the big batch's mean over
    tokens, and the weights end measurably elsewhere."""
    make_model = CASES["token-classification"][0]
    rows = _rows(96, 0, token_labels=True, num_labels=4)
    one = _run(make_model, rows, batch_size=32, grad_accum=1, objective=Objective("tokens"))
    naive = _run(make_model, rows, batch_size=8, grad_accum=4, objective=Objective("examples"))
    assert _max_diff(one, naive) > 1e-6


def test_short_last_window_and_uneven_micro_batches():
    """100 rows, batch 8, accumulation 4: an epoch is 13 micro-batches = 4 steps, the last of one short
    micro-batch (4 rows). One batch of 32 per step gives the same epoch (32, 32, 32, 4)."""
    make_model = CASES["sequence-classification"][0]
    rows = _rows(100, 3, token_labels=False, num_labels=3)
    one = _run(make_model, rows, batch_size=32, grad_accum=1, objective=Objective("examples"), steps=4)
    four = _run(make_model, rows, batch_size=8, grad_accum=4, objective=Objective("examples"), steps=4)
    assert _max_diff(one, four) <= TOL


def test_causal_lm_normalised_by_next_tokens():
    def make_model():
        return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=40, n_embd=16, n_layer=2, n_head=2,
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))

    g = torch.Generator().manual_seed(5)
    rows = []
    for _ in range(64):
        ids = torch.randint(1, 50, (int(torch.randint(4, 20, (1,), generator=g)),), generator=g)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    one = _run(make_model, rows, batch_size=16, grad_accum=1, objective=Objective("next-tokens"))
    four = _run(make_model, rows, batch_size=4, grad_accum=4, objective=Objective("next-tokens"))
    assert _max_diff(one, four) <= TOL


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_class_weights_and_smoothing_accumulate_exactly(smoothing):
    """With class weights the mean divides by the summed weights of the targets; accumulation must
    weigh micro-batches by those sums for the update to be the big batch's."""
    make_model = CASES["sequence-classification"][0]
    rows = _rows(64, 4, token_labels=False, num_labels=3)
    weights = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)
    objective = Objective("examples", class_weights=weights, label_smoothing=smoothing)
    one = _run(make_model, rows, batch_size=32, grad_accum=1, objective=objective)
    four = _run(make_model, rows, batch_size=8, grad_accum=4, objective=objective)
    assert _max_diff(one, four) <= TOL


def test_custom_loss_matches_torch_cross_entropy():
    """Objective.loss with weights and smoothing is torch's cross_entropy on the model's logits (float64:
    1e-12)."""
    torch.manual_seed(0)
    model = BertForTokenClassification(_bert_config(4)).double().eval()
    batch = _collate(_rows(6, 9, token_labels=True, num_labels=4))
    weights = torch.tensor([1.0, 2.0, 0.5, 4.0], dtype=torch.float64)
    ours = Objective("tokens", class_weights=weights, label_smoothing=0.1).loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 4), batch["labels"].reshape(-1), weight=weights,
                                            label_smoothing=0.1)
    assert abs(ours.item() - ref.item()) <= 1e-12
    units = Objective("tokens", class_weights=weights).units(batch)
    labelled = batch["labels"][batch["labels"] != -100]
    assert units == pytest.approx(weights[labelled].sum().item(), abs=1e-9)


def test_class_weight_parsing_and_errors():
    names = ["negative", "neutral", "positive"]
    assert parse_class_weights("1,2,3", names).tolist() == [1.0, 2.0, 3.0]
    assert parse_class_weights("positive=3, negative=1,neutral=2", names).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="2 weights for 3 labels"):
        parse_class_weights("1,2", names)
    with pytest.raises(ValueError, match="'happy' is not a label"):
        parse_class_weights("happy=1,negative=1,neutral=1", names)
    with pytest.raises(ValueError, match="not a number"):
        parse_class_weights("1,x,3", names)
    with pytest.raises(ValueError, match="no weight for neutral"):
        parse_class_weights("negative=1,positive=2", names)
    # balanced: n / (C * n_c), as scikit-learn's compute_class_weight("balanced")
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    ids = [0, 0, 0, 1, 2, 2]
    ref = compute_class_weight("balanced", classes=np.arange(3), y=np.array(ids))
    assert torch.allclose(balanced_weights(ids, 3).double(), torch.tensor(ref), atol=1e-6)


def test_train_args_errors():
    with pytest.raises(ValueError, match="grad_accum must be a positive integer"):
        TrainArgs(grad_accum=0)
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainArgs(precision="fp8")
    with pytest.raises(ValueError, match="patience"):
        TrainArgs(patience=0)
    assert total_steps(TrainArgs(epochs=2, grad_accum=4), 13) == 8  # ceil(13 / 4) steps per epoch
