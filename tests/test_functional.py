"""minift/nn/functional.py against torch: softmax, GELU (both forms), LayerNorm and dropout.

Forward values and gradients are compared with `torch.softmax`, `F.gelu`, `F.layer_norm` in float32
and float64, and every hand-derived backward goes through `torch.autograd.gradcheck` in float64.
"""

import pytest
import torch
import torch.nn.functional as F

from minift.nn.functional import (
    Dropout,
    LayerNorm,
    activation,
    dropout,
    gelu,
    gelu_tanh,
    layer_norm,
    softmax,
)

SHAPES = [(7,), (3, 5), (2, 3, 4, 9), (4, 1, 6)]
# float32 values of O(1): a few units in the last place; float64: the project's 1e-10.
TOL = {torch.float32: 1e-6, torch.float64: 1e-10}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def grads_of(fn, x: torch.Tensor, *params: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """Gradients of sum(fn(x) * R) for a fixed random R: checks the whole Jacobian, not only its row sums
    (which for softmax are identically zero and would hide a wrong backward)."""
    inputs = [t.detach().clone().requires_grad_() for t in (x, *params)]
    out = fn(*inputs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * weights).sum().backward()
    return [t.grad for t in inputs]


# ----------------------------------------------------------------------------------------------------
# softmax


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_softmax_matches_torch_on_every_dim(dtype, shape, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 5
    for dim in range(-len(shape), len(shape)):
        assert max_diff(softmax(x, dim), torch.softmax(x, dim)) <= TOL[dtype]
        ours = grads_of(lambda t, dim=dim: softmax(t, dim), x, seed=seed)[0]
        ref = grads_of(lambda t, dim=dim: torch.softmax(t, dim), x, seed=seed)[0]
        assert max_diff(ours, ref) <= TOL[dtype] * 10  # a product of two O(1) terms and a sum


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_extreme_values(dtype):
    big = torch.finfo(dtype).max
    x = torch.tensor(
        [
            [1e4, -1e4, 0.0, 3.0],  # exp(1e4) overflows without the max subtraction
            [big, big / 2, -big, 0.0],  # differences near the largest float
            [-float("inf"), 1.0, 2.0, -float("inf")],  # masked entries get exactly 0
            [88.0, 89.0, 90.0, 91.0],  # exp overflows float32 from ~88.7
            [-1e30, -1e30, -1e30, -1e30],  # all equal and huge: uniform
        ],
        dtype=dtype,
    )
    ours, ref = softmax(x, -1), torch.softmax(x, -1)
    assert torch.isfinite(ours).all()
    assert max_diff(ours, ref) <= TOL[dtype]
    assert (ours[2, [0, 3]] == 0).all()


def test_softmax_all_masked_row_is_nan_like_torch():
    # Why attention masks use finfo.min and not -inf (see minift/nn/attention.py): 0/0 = NaN.
    x = torch.tensor([[-float("inf")] * 3, [0.0, 1.0, 2.0]])
    ours, ref = softmax(x, -1), torch.softmax(x, -1)
    assert torch.equal(ours.isnan(), ref.isnan()) and ours[0].isnan().all()
    assert max_diff(ours[1], ref[1]) <= 1e-6  # fp32 activations of O(1)


@pytest.mark.parametrize("shape,dim", [((3, 5), -1), ((3, 5), 0), ((2, 3, 4), 1)])
def test_softmax_gradcheck(shape, dim):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: softmax(t, dim), (x,))


def test_softmax_errors():
    with pytest.raises(ValueError, match=r"dim=2 is out of range for a tensor of shape \(3, 4\)"):
        softmax(torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="floating-point tensor, got torch.int64"):
        softmax(torch.zeros(3, dtype=torch.long), 0)


# ----------------------------------------------------------------------------------------------------
# GELU


GELUS = [(gelu, "none"), (gelu_tanh, "tanh")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fn,approximate", GELUS)
def test_gelu_matches_torch(dtype, fn, approximate):
    # A dense grid over the curved part plus large |x|, where GELU -> relu and the tails matter.
    x = torch.cat(
        [torch.linspace(-8, 8, 2001, dtype=dtype), torch.tensor([-100.0, -30.0, 30.0, 100.0], dtype=dtype)]
    )
    assert max_diff(fn(x), F.gelu(x, approximate=approximate)) <= TOL[dtype] * 10  # |GELU(x)| up to 100
    ours = grads_of(fn, x)[0]
    ref = grads_of(lambda t: F.gelu(t, approximate=approximate), x)[0]
    assert max_diff(ours, ref) <= TOL[dtype] * 10  # derivative O(1) times a N(0, 1) weight


@pytest.mark.parametrize("fn", [gelu, gelu_tanh])
def test_gelu_gradcheck(fn):
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True) * 3
    assert torch.autograd.gradcheck(fn, (x,))


def test_activation_by_config_name():
    x = torch.randn(100)
    for name, approximate in [("gelu", "none"), ("gelu_new", "tanh"), ("gelu_pytorch_tanh", "tanh")]:
        for fast in (False, True):
            assert max_diff(activation(name, fast)(x), F.gelu(x, approximate=approximate)) <= 1e-6
    assert activation("gelu") is gelu and activation("gelu_new") is gelu_tanh
    with pytest.raises(ValueError, match="unsupported activation 'swish'"):
        activation("swish")


# ----------------------------------------------------------------------------------------------------
# LayerNorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 36), (1, 7, 384), (4, 2)])
@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_layer_norm_matches_torch(dtype, shape, eps):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen, dtype=dtype) * 3 + 1  # non-zero mean and scale
    w = torch.randn(shape[-1], generator=gen, dtype=dtype)
    b = torch.randn(shape[-1], generator=gen, dtype=dtype)

    def ref_fn(t, w, b):
        return F.layer_norm(t, (shape[-1],), w, b, eps)

    def ours_fn(t, w, b):
        return layer_norm(t, w, b, eps)

    assert max_diff(ours_fn(x, w, b), ref_fn(x, w, b)) <= TOL[dtype] * 10  # outputs of O(|w| * 3)
    for ours, ref in zip(grads_of(ours_fn, x, w, b), grads_of(ref_fn, x, w, b)):
        # dw and db sum over up to 7 rows of O(3) terms; dx has 1/std ~ 1/3 in front.
        assert max_diff(ours, ref) <= TOL[dtype] * 20


def test_layer_norm_gradcheck():
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: layer_norm(x, w, b, 1e-5), (x, w, b))


def test_layer_norm_bfloat16_is_computed_in_float32():
    x = (torch.randn(4, 384) * 10 + 50).to(torch.bfloat16)  # big mean: float16/bf16 sums lose it
    w, b = torch.randn(384), torch.randn(384)
    ours = layer_norm(x, w, b, 1e-12)
    ref = F.layer_norm(x.float(), (384,), w, b, 1e-12)
    assert ours.dtype == torch.bfloat16
    # Only the final rounding to bfloat16 differs: half an ulp of a value up to ~4, 2^-8 relative.
    assert ((ours.float() - ref).abs() <= ref.abs() * 2**-8 + 1e-6).all()


def test_layer_norm_module_fast_and_readable_agree():
    torch.manual_seed(0)
    readable, fast = LayerNorm(36, eps=1e-12), LayerNorm(36, eps=1e-12, fast=True)
    assert [n for n, _ in readable.named_parameters()] == ["weight", "bias"]  # checkpoint names
    with torch.no_grad():
        for m in (readable, fast):
            m.weight.copy_(torch.linspace(0.5, 2, 36))
            m.bias.copy_(torch.linspace(-1, 1, 36))
    x = torch.randn(2, 5, 36)
    assert max_diff(readable(x), fast(x)) <= 1e-5  # fp32 activations
    with pytest.raises(ValueError, match=r"input of shape \(2, 5, 35\) does not end in 36 features"):
        readable(torch.randn(2, 5, 35))


def test_layer_norm_shape_error_names_both_shapes():
    with pytest.raises(ValueError, match=r"weight \(5,\) and bias \(6,\).*x \(2, 6\)"):
        layer_norm(torch.zeros(2, 6), torch.ones(5), torch.zeros(6))


# ----------------------------------------------------------------------------------------------------
# Dropout


def test_dropout_is_inverted_dropout():
    torch.manual_seed(0)
    x = torch.rand(200_000) + 1.0  # never 0, so a 0 in the output means "dropped"
    p = 0.3
    y = dropout(x, p, training=True)
    kept = y != 0
    # Kept fraction: 200k Bernoulli(0.7) draws have std 0.001; 0.005 is five standard deviations.
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    assert max_diff(y[kept], x[kept] / (1 - p)) <= 1e-6  # kept values scaled by exactly 1/(1-p)
    assert dropout(x, p, training=False) is x and dropout(x, 0.0, training=True) is x
    assert (dropout(x, 1.0, training=True) == 0).all()


def test_dropout_backward_uses_the_forward_mask():
    torch.manual_seed(1)
    x = torch.randn(50, 40, requires_grad=True)
    y = dropout(x, 0.5, training=True)
    g = torch.randn(50, 40)
    y.backward(g)
    expected = torch.where(y != 0, g / 0.5, torch.zeros_like(g))  # d y / d x = keep / (1 - p)
    assert max_diff(x.grad, expected) <= 1e-6


def test_dropout_gradcheck_with_a_fixed_seed():
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)

    def seeded(t):  # gradcheck calls the function many times: the same mask each time
        torch.manual_seed(3)
        return dropout(t, 0.4, training=True)

    assert torch.autograd.gradcheck(seeded, (x,))


def test_dropout_module_train_and_eval():
    layer = Dropout(0.5)
    x = torch.ones(1000)
    assert (layer(x) != x).any()
    layer.eval()
    assert layer(x) is x
    with pytest.raises(ValueError, match="dropout probability must be in"):
        Dropout(1.5)
