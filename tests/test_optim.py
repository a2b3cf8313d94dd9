"""minift.optim.AdamW, param_groups and clip_grad_norm_ against torch.optim.AdamW and torch's clipping.

Two copies of a small model train side by side on the same random batches, one with minift's AdamW
and one with torch's; after 100 steps every parameter and every optimizer state tensor must agree.
"""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minift.optim import AdamW, clip_grad_norm_, param_groups

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


class LayerNorm(nn.Module):
    """Stands in for a hand-written LayerNorm (not torch's class): param_groups must still find it."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias)


class TinyClassifier(nn.Module):
    """Embedding -> Linear -> LayerNorm -> GELU -> Linear: matrices, biases and norm parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.dense = nn.Linear(6, 8)
        self.norm = LayerNorm(8)
        self.ln_f = nn.LayerNorm(8)  # GPT-2 style name: no "LayerNorm" in it
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids).mean(dim=1)  # (B, 6)
        return self.head(self.ln_f(F.gelu(self.norm(self.dense(h)))))  # (B, 3)


def groups_with_two_settings(model: nn.Module) -> list[dict]:
    # Two groups with different hyper-parameters everywhere, so a mix-up between groups shows.
    decay, no_decay = param_groups(model, weight_decay=0.1)
    no_decay.update(lr=3e-3, betas=(0.8, 0.99), eps=1e-6)
    return [decay, no_decay]


def batches(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 11, (16, 5), generator=gen), torch.randint(0, 3, (16,), generator=gen))
        for _ in range(n)
    ]


def train(model: nn.Module, optimizer: torch.optim.Optimizer, data) -> None:
    for ids, labels in data:
        optimizer.zero_grad()
        F.cross_entropy(model(ids), labels).backward()
        optimizer.step()


def twin_models(seed: int, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    model = TinyClassifier().to(dtype)
    return model, copy.deepcopy(model)


def max_param_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def max_state_diff(ours: torch.optim.Optimizer, ref: torch.optim.Optimizer) -> float:
    diffs = []
    for p, q in zip(ours.state, ref.state):  # both keyed by parameter, in first-step order
        for key in ("step", "exp_avg", "exp_avg_sq"):
            diffs.append((ours.state[p][key] - ref.state[q][key]).abs().max().item())
    return max(diffs)


# ---------------------------------------------------------------------------------------------------
# AdamW
# ---------------------------------------------------------------------------------------------------


def train_three(seed: int, dtype: torch.dtype, steps: int = 100):
    """torch.optim.AdamW, our loop path and our foreach path, from one initialisation on one data stream."""
    torch.manual_seed(seed)
    ref_model = TinyClassifier().to(dtype)
    loop_model, fast_model = copy.deepcopy(ref_model), copy.deepcopy(ref_model)
    ref = torch.optim.AdamW(groups_with_two_settings(ref_model), lr=1e-2, weight_decay=0.1, foreach=False)
    loop = AdamW(groups_with_two_settings(loop_model), lr=1e-2, weight_decay=0.1, foreach=False)
    fast = AdamW(groups_with_two_settings(fast_model), lr=1e-2, weight_decay=0.1, foreach=True)
    data = batches(steps, seed)
    for model, optimizer in ((ref_model, ref), (loop_model, loop), (fast_model, fast)):
        train(model, optimizer, data)
    return (ref_model, ref), (loop_model, loop), (fast_model, fast)


@pytest.mark.parametrize("seed", [0, 1])
def test_adamw_matches_torch_float64(seed):
    (ref_model, ref), (loop_model, loop), (fast_model, fast) = train_three(seed, F64)
    for model, optimizer in ((loop_model, loop), (fast_model, fast)):
        assert max_param_diff(model, ref_model) <= 1e-10  # float64 math
        assert max_state_diff(optimizer, ref) <= 1e-10
    # The fast path runs the same equations in the same order: equal to rounding level at most.
    assert max_param_diff(loop_model, fast_model) <= 1e-12


def test_adamw_matches_torch_float32():
    (ref_model, _), (loop_model, _), (fast_model, _) = train_three(3, torch.float32)
    # float32: torch updates m with lerp, we with b1 m + (1 - b1) g (the paper's form); the ~1e-7
    # rounding difference per step feeds back through 100 steps of training (measured ~2e-7).
    assert max_param_diff(loop_model, ref_model) <= 1e-5
    assert max_param_diff(fast_model, ref_model) <= 1e-5


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
def test_adamw_fused_is_torchs_fused_adamw(dtype):
    """fused=True runs torch's fused kernel on minift's state: torch.optim.AdamW(fused=True) bit for bit,
    and the plain torch.optim.AdamW within the loop path's tolerances (float64 1e-10; float32 1e-5, the
    kernel's own order of the same operations, fed back through 100 steps)."""
    torch.manual_seed(4)
    ref_model = TinyClassifier().to(dtype)
    fused_model, torch_fused_model = copy.deepcopy(ref_model), copy.deepcopy(ref_model)
    ref = torch.optim.AdamW(groups_with_two_settings(ref_model), lr=1e-2, weight_decay=0.1, foreach=False)
    ours = AdamW(groups_with_two_settings(fused_model), lr=1e-2, weight_decay=0.1, fused=True)
    theirs = torch.optim.AdamW(groups_with_two_settings(torch_fused_model), lr=1e-2, weight_decay=0.1, fused=True)
    data = batches(100, 4)
    for model, optimizer in ((ref_model, ref), (fused_model, ours), (torch_fused_model, theirs)):
        train(model, optimizer, data)
    assert max_param_diff(fused_model, torch_fused_model) == 0.0
    assert max_state_diff(ours, theirs) == 0.0
    assert max_param_diff(fused_model, ref_model) <= (1e-10 if dtype == F64 else 1e-5)
    with pytest.raises(ValueError, match="choose one"):
        AdamW(ref_model.parameters(), foreach=True, fused=True)


def test_adamw_skips_parameters_without_gradients_like_torch():
    # The head gets a gradient only on every other step: no update, no decay, and its own step count.
    ours_model, ref_model = twin_models(5, F64)
    ours = AdamW(ours_model.parameters(), lr=1e-2, weight_decay=0.3, foreach=True)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, weight_decay=0.3)
    for i, (ids, labels) in enumerate(batches(20, 5)):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(ids), labels).backward()
            if i % 2 == 0:
                model.head.weight.grad = None
            opt.step()
    assert max_param_diff(ours_model, ref_model) <= 1e-10
    assert ours.state[ours_model.head.weight]["step"].item() == 10


def _save_load(optimizer: torch.optim.Optimizer) -> dict:
    # Through bytes, as a checkpoint would: the loaded state shares no tensor with the running one.
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("path", [{}, {"foreach": True}, {"fused": True}], ids=["loop", "foreach", "fused"])
def test_adamw_state_dict_resume_continues_identically(path):
    data = batches(60, 6)
    straight, resumed = twin_models(6, F64)
    opt = AdamW(groups_with_two_settings(straight), lr=1e-2, **path)
    train(straight, opt, data)

    first = AdamW(groups_with_two_settings(resumed), lr=1e-2, **path)
    train(resumed, first, data[:25])
    saved, weights = _save_load(first), copy.deepcopy(resumed.state_dict())
    model = TinyClassifier().to(F64)  # a fresh process: new model, new optimizer, then load both
    model.load_state_dict(weights)
    second = AdamW(groups_with_two_settings(model), lr=1e-2, **path)
    second.load_state_dict(saved)
    train(model, second, data[25:])
    assert max_param_diff(straight, model) == 0.0  # exactly the same operations on the same numbers
    assert max_state_diff(opt, second) == 0.0


def test_adamw_loads_a_torch_state_dict():
    # Same state names as torch.optim.AdamW: its state_dict carries over, and training continues alike.
    data = batches(40, 7)
    ref_model, ours_model = twin_models(7, F64)
    ref = torch.optim.AdamW(groups_with_two_settings(ref_model), lr=1e-2)
    train(ref_model, ref, data[:20])
    ours_model.load_state_dict(ref_model.state_dict())
    ours = AdamW(groups_with_two_settings(ours_model), lr=1e-2)
    ours.load_state_dict(_save_load(ref))
    train(ref_model, ref, data[20:])
    train(ours_model, ours, data[20:])
    assert max_param_diff(ours_model, ref_model) <= 1e-10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": -1.0}, r"lr must be a finite number >= 0, got -1\.0"),
        ({"lr": float("nan")}, r"lr must be"),
        ({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\), got 1\.0"),
        ({"betas": (0.9,)}, r"betas must be a pair"),
        ({"eps": -1e-8}, r"eps must be"),
        ({"weight_decay": -0.1}, r"weight_decay must be"),
    ],
)
def test_adamw_rejects_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdamW([nn.Parameter(torch.zeros(2))], **kwargs)


def test_adamw_rejects_bad_groups_and_gradients():
    with pytest.raises(ValueError, match=r"betas\[0\] must be in \[0, 1\), got 1\.5"):
        AdamW([{"params": [nn.Parameter(torch.zeros(2))], "betas": (1.5, 0.999)}])
    with pytest.raises(ValueError, match=r"floating-point parameters; got dtype torch\.complex64"):
        AdamW([nn.Parameter(torch.zeros(2, dtype=torch.complex64))])
    embed = nn.Embedding(5, 2, sparse=True)
    embed(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match=r"sparse gradients"):
        AdamW(embed.parameters()).step()


# ---------------------------------------------------------------------------------------------------
# param_groups
# ---------------------------------------------------------------------------------------------------


def names_of(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_param_groups_split_and_skip_frozen():
    model = TinyClassifier()
    model.embed.weight.requires_grad_(False)  # frozen: in neither group
    decay, no_decay = param_groups(model, weight_decay=0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    assert names_of(model, decay) == {"dense.weight", "head.weight"}
    assert names_of(model, no_decay) == {
        "dense.bias",
        "norm.weight",
        "norm.bias",
        "ln_f.weight",
        "ln_f.bias",
        "head.bias",
    }


def test_param_groups_on_real_bert_match_the_usual_recipe(minilm_dir):
    # The real MiniLM BERT (as transformers builds it): our groups equal the classic fine-tuning
    # recipe `any(nd in name for nd in ["bias", "LayerNorm.weight"])`, parameter for parameter.
    from transformers import BertModel

    model = BertModel.from_pretrained(minilm_dir)
    decay, no_decay = param_groups(model, weight_decay=0.01)
    names = [name for name, _ in model.named_parameters()]
    expected_no_decay = {n for n in names if any(nd in n for nd in ("bias", "LayerNorm.weight"))}
    assert names_of(model, no_decay) == expected_no_decay
    assert names_of(model, decay) == set(names) - expected_no_decay
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_param_groups_find_gpt2_layer_norms():
    # GPT-2 names its norms ln_1, ln_2, ln_f: no "LayerNorm" in the name, found by module type.
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=8))
    _, no_decay = param_groups(model, weight_decay=0.01)
    norm_names = {n for n, _ in model.named_parameters() if ".ln_" in n or n.startswith("ln_")}
    bias_names = {n for n, _ in model.named_parameters() if n.endswith("bias")}
    assert norm_names and names_of(model, no_decay) == norm_names | bias_names


def test_param_groups_errors():
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match=r"Linear has no trainable parameters"):
        param_groups(frozen, 0.01)
    with pytest.raises(ValueError, match=r"weight_decay must be a finite number >= 0, got -1.0"):
        param_groups(nn.Linear(2, 2), -1.0)


# ---------------------------------------------------------------------------------------------------
# clip_grad_norm_
# ---------------------------------------------------------------------------------------------------


def params_with_grads(seed: int, dtype: torch.dtype, scale: float) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.zeros(shape, dtype=dtype)) for shape in [(4, 3), (7,), (2, 2, 5), (3,)]]
    for p in params[:3]:  # the last one has no gradient: it must be skipped, as in torch
        p.grad = scale * torch.randn(p.shape, dtype=dtype, generator=gen)
    return params


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-10), (torch.float32, 1e-6)])  # fp32: ~1e-7 rel. rounding
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("scale", [0.01, 10.0], ids=["below", "above"])  # norm below / above max_norm
@pytest.mark.parametrize("seed", [0, 1])
def test_clip_matches_torch(dtype, tol, norm_type, scale, seed):
    ours, ref = params_with_grads(seed, dtype, scale), params_with_grads(seed, dtype, scale)
    norm_ours = clip_grad_norm_(ours, max_norm=1.0, norm_type=norm_type)
    norm_ref = torch.nn.utils.clip_grad_norm_(ref, max_norm=1.0, norm_type=norm_type)
    assert abs(norm_ours.item() - norm_ref.item()) <= tol * max(1.0, norm_ref.item())
    for p, q in zip(ours, ref):
        if q.grad is None:
            assert p.grad is None
        else:
            assert (p.grad - q.grad).abs().max().item() <= tol
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours[:3]]), norm_type)
    assert clipped.item() <= 1.0 + tol  # and the point of it all: the global norm is now <= max_norm


def test_clip_single_tensor_generator_and_no_grads():
    p = nn.Parameter(torch.zeros(3, dtype=F64))
    p.grad = torch.tensor([3.0, 4.0, 0.0], dtype=F64)
    assert clip_grad_norm_(p, 1.0).item() == 5.0  # a bare tensor works, as in torch
    assert (p.grad - torch.tensor([0.6, 0.8, 0.0], dtype=F64)).abs().max().item() <= 1e-6  # 1e-6 of the eps
    model = nn.Linear(2, 2)
    assert clip_grad_norm_(model.parameters(), 1.0).item() == 0.0  # generator, no gradients yet


def test_clip_nonfinite():
    ours, ref = params_with_grads(2, F64, 1.0), params_with_grads(2, F64, 1.0)
    ours[1].grad[0] = ref[1].grad[0] = float("inf")
    with pytest.raises(RuntimeError, match=r"non-finite gradients at positions \[1\]"):
        clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(ref, 1.0, error_if_nonfinite=True)
    # Without the check both scale by max_norm / inf = 0 (and inf * 0 = nan), identically.
    norm_ours = clip_grad_norm_(ours, 1.0)
    norm_ref = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    assert norm_ours.item() == norm_ref.item() == math.inf
    for p, q in zip(ours[:3], ref[:3]):
        assert torch.equal(p.grad.isnan(), q.grad.isnan())
        assert torch.equal(p.grad.nan_to_num(), q.grad.nan_to_num())


def test_clip_errors():
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"max_norm must be a number >= 0, got -1\.0"):
        clip_grad_norm_([p], -1.0)
    with pytest.raises(ValueError, match=r"norm_type must be > 0"):
        clip_grad_norm_([p], 1.0, norm_type=0)
