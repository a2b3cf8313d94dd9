"""minift/train/precision.py against torch: the autocast contexts, and LossScaler against
torch.amp.GradScaler fed the same gradients (with inf/NaN injected at chosen steps), decision by
decision and bit by bit."""

import copy
import json
import math
import warnings
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minift.optim import clip_grad_norm_
from minift.train.precision import LossScaler, autocast_context, make_loss_scaler

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


# ----------------------------------------------------------------------------------------------------
# autocast_context
# ----------------------------------------------------------------------------------------------------


def test_bf16_on_cpu_casts_matmuls_only_inside():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with autocast_context(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert F.linear(x, w).dtype == torch.bfloat16  # matmuls run in bf16 ...
        assert (x @ w.T).dtype == torch.bfloat16
        assert (x + x).dtype == torch.float32  # ... element-wise ops keep their inputs' dtype
        assert F.cross_entropy(F.linear(x, w), torch.tensor([0, 1, 2, 0])).dtype == torch.float32
        # bf16 keeps 8 significant bits: relative error of one rounded product sum <= 2^-8 per input,
        # so for a K=8 dot product of N(0,1) numbers 0.1 absolute is a generous bound; 0 would fail.
        diff = (F.linear(x, w).float() - F.linear(x.double(), w.double()).float()).abs().max().item()
        assert 0 < diff < 0.1
    assert not torch.is_autocast_enabled("cpu")
    assert F.linear(x, w).dtype == torch.float32


def test_fp32_is_a_no_op():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with autocast_context("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
        assert F.linear(x, w).dtype == torch.float32


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_fp16_needs_cuda(device):
    with pytest.raises(ValueError, match=rf"--precision fp16 needs a CUDA device, but the device is {device}"):
        autocast_context(torch.device(device), "fp16")


@pytest.mark.parametrize("bad", ["fp8", "float16", "", None])
def test_unknown_precision(bad):
    with pytest.raises(ValueError, match=r"--precision .*expected one of fp32, bf16, fp16"):
        autocast_context(CPU, bad)
    with pytest.raises(ValueError, match=r"expected one of fp32, bf16, fp16"):
        make_loss_scaler(bad)


def test_autocast_that_disables_itself_is_an_error(monkeypatch):
    """torch.autocast on a device that cannot run the dtype (bf16 on macOS < 14) only warns and turns
    itself off; training would silently run in float32. Simulated here, as this machine has no MPS."""

    class SelfDisablingAutocast:
        def __init__(self, device_type: str, dtype: torch.dtype) -> None:
            warnings.warn("In MPS autocast, but the target dtype is not supported. Disabling autocast.",
                          stacklevel=2)
            self._enabled = False

    monkeypatch.setattr(torch, "autocast", SelfDisablingAutocast)
    with pytest.raises(ValueError, match=r"--precision bf16 on mps: torch.autocast refused it: In MPS autocast, "
                                         r"but the target dtype is not supported"):
        autocast_context(torch.device("mps"), "bf16")


def test_make_loss_scaler_only_for_fp16():
    assert make_loss_scaler("fp16").enabled
    assert not make_loss_scaler("bf16").enabled and not make_loss_scaler("fp32").enabled
    assert make_loss_scaler("fp16", init_scale=128.0).get_scale() == 128.0


@needs_cuda
@pytest.mark.parametrize("precision,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_cuda_autocast(precision, dtype):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    x, w = torch.randn(4, 8, device="cuda"), torch.randn(3, 8, device="cuda")
    with autocast_context(torch.device("cuda"), precision):
        assert F.linear(x, w).dtype == dtype
        assert F.softmax(F.linear(x, w), dim=-1).dtype == torch.float32  # softmax is on CUDA's fp32 list
    assert F.linear(x, w).dtype == torch.float32


# ----------------------------------------------------------------------------------------------------
# LossScaler vs torch.amp.GradScaler
# ----------------------------------------------------------------------------------------------------


def run(scaler, model, optimizer, *, steps, seed, inject, unscale_first, gain=1.0, autocast=None):
    """Train `model` with `scaler`; return (scale after each step, indices of skipped steps, states).

    `inject` maps a step to "inf" or "nan", written into one gradient after backward; `gain` multiplies
    the loss (a large one makes the scaled loss overflow on its own). Skipped steps are counted with an
    optimizer step hook, so they are seen the same way for both scalers.
    """
    taken = []
    handle = optimizer.register_step_post_hook(lambda *_: taken.append(True))
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    scales, skipped, states = [], [], []
    for step in range(steps):
        x = torch.randn(4, 6, generator=g).to(device, dtype)
        y = torch.randn(4, 3, generator=g).to(device, dtype)
        optimizer.zero_grad()
        with autocast or nullcontext():
            loss = gain * F.mse_loss(model(x).float(), y.float())
        scaler.scale(loss).backward()
        if step in inject:
            model[0].weight.grad[1, 2] = math.inf if inject[step] == "inf" else math.nan
        if unscale_first:  # the recipe for clipping: the true gradients are clipped, not the scaled ones
            scaler.unscale_(optimizer)
            clip_grad_norm_(model.parameters(), 1.0)
        n_before = len(taken)
        scaler.step(optimizer)
        if len(taken) == n_before:
            skipped.append(step)
        scaler.update()
        scales.append(scaler.get_scale())
        states.append(scaler.state_dict())
    handle.remove()
    return scales, skipped, states


def make_pair(dtype, seed=0, device="cpu"):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(device, dtype)
    return model, copy.deepcopy(model)


# (init_scale, growth_factor, backoff_factor, growth_interval), loss gain: torch's defaults with a short
# interval; factors that are not powers of two (the float32 rounding of S and of 1/S matters); and a
# scale near float32's range with a large loss, which grows until the scaled loss overflows by itself.
SETTINGS = [((2.0**16, 2.0, 0.5, 3), 1.0), ((1000.0, 1.7, 0.3, 2), 1.0), ((2.0**118, 2.0, 0.5, 2), 1e4)]
INJECT = {3: "inf", 4: "inf", 9: "nan", 15: "inf"}


@pytest.mark.parametrize("settings,gain", SETTINGS, ids=["default", "odd-factors", "overflowing"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("unscale_first", [False, True], ids=["step-only", "unscale-clip-step"])
def test_same_decisions_as_grad_scaler(settings, gain, dtype, unscale_first):
    ours_model, ref_model = make_pair(dtype)
    ours_opt = torch.optim.AdamW(ours_model.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
    kw = {"steps": 24, "seed": 1, "inject": INJECT, "unscale_first": unscale_first, "gain": gain}
    ours = run(LossScaler(*settings), ours_model, ours_opt, **kw)
    ref = run(torch.amp.GradScaler("cpu", *settings), ref_model, ref_opt, **kw)
    scales, skipped, states = ours
    assert scales == ref[0]  # the scale after every step, exactly
    assert skipped == ref[1]  # the same steps skipped
    assert states == ref[2]  # and the same state_dict (same keys, same numbers) after every step
    assert set(INJECT) <= set(skipped) and len(skipped) < 24  # the test does see skips and steps
    assert len(set(scales)) > 2  # ... and the scale both grows and backs off
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)  # identical parameters after the run: same unscaled gradients, bit for bit
    if gain > 1:
        assert len(skipped) > len(INJECT)  # overflow without injection: the scaled loss alone hits inf


def test_growth_stops_below_inf():
    """At 2^127 a growth by 2 would give inf: both scalers keep 2^127 and reset the count."""
    results = []
    for scaler in (LossScaler(2.0**127, growth_interval=1), torch.amp.GradScaler("cpu", 2.0**127, growth_interval=1)):
        model, _ = make_pair(torch.float32)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        results.append(run(scaler, model, opt, steps=3, seed=0, inject={}, unscale_first=False, gain=1e-3))
    assert results[0] == results[1]
    scales, skipped, states = results[0]
    assert scales == [2.0**127] * 3 and skipped == [] and states[-1]["_growth_tracker"] == 0


def test_resume_from_json_either_way():
    """Half a run with one scaler, the state through JSON, the second half with the other."""
    settings = (1000.0, 1.7, 0.3, 3)
    a_model, b_model = make_pair(torch.float32, seed=3)
    a_opt = torch.optim.AdamW(a_model.parameters(), lr=1e-2)
    b_opt = torch.optim.AdamW(b_model.parameters(), lr=1e-2)
    ref = torch.amp.GradScaler("cpu", *settings)
    ours = LossScaler(*settings)
    run(ref, a_model, a_opt, steps=7, seed=5, inject={2: "inf"}, unscale_first=False)
    run(ours, b_model, b_opt, steps=7, seed=5, inject={2: "inf"}, unscale_first=False)

    ours_resumed, ref_resumed = LossScaler(), torch.amp.GradScaler("cpu")
    ours_resumed.load_state_dict(json.loads(json.dumps(ref.state_dict())))  # torch -> JSON -> minift
    ref_resumed.load_state_dict(json.loads(json.dumps(ours.state_dict())))  # minift -> JSON -> torch
    second_half = {"steps": 9, "seed": 6, "inject": {4: "nan"}, "unscale_first": True}
    ours_after = run(ours_resumed, a_model, a_opt, **second_half)
    ref_after = run(ref_resumed, b_model, b_opt, **second_half)
    assert ours_after == ref_after
    for p, q in zip(a_model.parameters(), b_model.parameters()):
        assert torch.equal(p, q)


def test_disabled_is_a_pass_through():
    model, _ = make_pair(torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = LossScaler(enabled=False)
    loss = model(torch.randn(2, 6)).square().mean()
    assert scaler.scale(loss) is loss
    loss.backward()
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    scaler.unscale_(opt)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert scaler.step(opt) is True
    assert not any(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    scaler.update()
    assert scaler.get_scale() == 1.0 and scaler.state_dict() == {}


def test_step_reports_skips():
    model, _ = make_pair(torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = LossScaler(init_scale=4.0)
    scaler.scale(model(torch.randn(2, 6)).sum()).backward()
    model[2].bias.grad[0] = math.nan
    before = [p.detach().clone() for p in model.parameters()]
    assert scaler.step(opt) is False
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    scaler.update()
    assert scaler.get_scale() == 2.0


def test_misuse_errors():
    model, _ = make_pair(torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = LossScaler()
    with pytest.raises(RuntimeError, match=r"no gradients were checked since the last update\(\)"):
        scaler.update()
    with pytest.raises(RuntimeError, match=r"no parameter of the optimizer has a gradient"):
        scaler.unscale_(opt)
    scaler.scale(model(torch.randn(2, 6)).sum()).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match=r"already called .* divided by the scale twice"):
        scaler.unscale_(opt)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match=r"step\(\): already called"):
        scaler.step(opt)
    with pytest.raises(RuntimeError, match=r"unscale_\(\): called after step\(\)"):
        scaler.unscale_(opt)


def test_fp16_gradients_refused():
    layer = nn.Linear(3, 2).half()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for p in layer.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=r"parameter 0 of param group 0 \(shape \[2, 3\]\) has a float16 gradient"):
        LossScaler().unscale_(opt)


@pytest.mark.parametrize("kwargs,message", [
    ({"init_scale": 0.0}, "the scale must be a finite number > 0"),
    ({"init_scale": math.inf}, "the scale must be a finite number > 0"),
    ({"growth_factor": 1.0}, "growth_factor must be > 1"),
    ({"backoff_factor": 1.0}, r"backoff_factor must be in \(0, 1\)"),
    ({"backoff_factor": 0.0}, r"backoff_factor must be in \(0, 1\)"),
    ({"growth_interval": 0}, "growth_interval must be an integer >= 1"),
    ({"growth_interval": 2.5}, "growth_interval must be an integer >= 1"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LossScaler(**kwargs)


def test_bad_state_dict():
    with pytest.raises(ValueError, match=r"missing key\(s\) scale, growth_factor"):
        LossScaler().load_state_dict({})
    state = LossScaler().state_dict()
    with pytest.raises(ValueError, match=r"_growth_tracker must be an integer >= 0, got -1"):
        LossScaler().load_state_dict({**state, "_growth_tracker": -1})
    with pytest.raises(ValueError, match=r"growth_factor must be > 1, got 0.5"):
        LossScaler().load_state_dict({**state, "growth_factor": 0.5})


@needs_cuda
def test_same_decisions_as_grad_scaler_cuda_fp16():
    ours_model, ref_model = make_pair(torch.float32, device="cuda")
    ours_opt = torch.optim.AdamW(ours_model.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
    kw = {"steps": 24, "seed": 1, "inject": INJECT, "unscale_first": True}
    ours = run(LossScaler(2.0**16, 2.0, 0.5, 3), ours_model, ours_opt,
               autocast=autocast_context(torch.device("cuda"), "fp16"), **kw)
    ref = run(torch.amp.GradScaler("cuda", 2.0**16, 2.0, 0.5, 3), ref_model, ref_opt,
              autocast=autocast_context(torch.device("cuda"), "fp16"), **kw)
    assert ours == ref
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)
