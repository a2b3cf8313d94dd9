"""Softmax, GELU, LayerNorm and dropout written by hand, each with the backward derived on paper.

Lesson: `lessons/03-functional.md` derives every formula used here (the softmax Jacobian, the GELU
derivatives, the LayerNorm backward, inverted dropout).

Each function is a `torch.autograd.Function`: the forward is the formula, the backward is its
derivative. Compared with letting autograd record the elementary ops, this saves only what the
formula needs (softmax keeps its output, GELU its input, LayerNorm the normalised input and one
scalar per row, dropout a 1-byte mask) and shows the math in one place. The fused PyTorch kernels
(`F.softmax`, `F.gelu`, `F.layer_norm`) compute the same numbers; `tests/test_functional.py` checks
both agree and runs `torch.autograd.gradcheck` on every backward in float64.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

# Half-precision inputs are normalised in float32 (as PyTorch's fused kernels do under autocast):
# a float16 sum over 384 features loses digits that LayerNorm's variance needs.
_COMPUTE_DTYPES = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return _COMPUTE_DTYPES.get(x.dtype, x.dtype)


def _check_float(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        found = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} expects a floating-point tensor, got {found}")


# ----------------------------------------------------------------------------------------------------
# Softmax
# ----------------------------------------------------------------------------------------------------


class _Softmax(torch.autograd.Function):
    """y = exp(x - m) / sum_j exp(x_j - m), m = max_j x_j   (any m gives the same y; the max keeps
    every exponent <= 0, so exp never overflows; Goodfellow et al., Deep Learning, sec. 4.1).

    Backward (lesson 03): the Jacobian is dy_i/dx_j = y_i ([i = j] - y_j), so for an upstream
    gradient g:  dx = y * (g - sum_j g_j y_j).  Only y is saved.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        z = x.to(_compute_dtype(x))
        y = z - z.amax(dim=dim, keepdim=True)  # new tensor: the in-place ops below do not touch x
        y.exp_()
        y.div_(y.sum(dim=dim, keepdim=True))
        y = y.to(x.dtype)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        grad_x = grad_y * y  # g_i y_i
        # y * (g - s) written as g*y - y*s, with s = sum_j g_j y_j: one fused multiply-subtract.
        grad_x.addcmul_(y, grad_x.sum(dim=ctx.dim, keepdim=True), value=-1.0)
        return grad_x, None


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Numerically stable softmax along `dim`, the same numbers as `torch.softmax(x, dim)`.

    Entries of -inf get probability 0; a slice that is entirely -inf gives NaN, as in torch
    (which is why attention masks use the dtype's finite minimum instead, see attention.py).
    """
    _check_float("softmax", x)
    ndim = max(x.dim(), 1)  # torch treats a 0-d tensor as having one dimension here
    if not -ndim <= dim < ndim:
        raise ValueError(f"softmax: dim={dim} is out of range for a tensor of shape {tuple(x.shape)}")
    return _Softmax.apply(x, dim % ndim)


# ----------------------------------------------------------------------------------------------------
# GELU, exact and tanh-approximated
# ----------------------------------------------------------------------------------------------------

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_COEF = 0.044715  # Hendrycks & Gimpel (2016), sec. 2: the cubic term of the tanh fit


class _Gelu(torch.autograd.Function):
    """GELU(x) = x Phi(x) = x/2 (1 + erf(x / sqrt 2))   (Hendrycks & Gimpel 2016, eq. in sec. 2).

    Backward: d/dx [x Phi(x)] = Phi(x) + x phi(x), with phi(x) = exp(-x^2/2) / sqrt(2 pi).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        y = x * _SQRT_HALF  # new tensor, then in place: erf, +1, *x, /2
        y.erf_().add_(1.0).mul_(x).mul_(0.5)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        # Two new tensors, then in-place steps: each allocation of a big CPU tensor costs page faults.
        cdf = (x * _SQRT_HALF).erf_().add_(1.0).mul_(0.5)  # Phi(x)
        x_pdf = (x * x).mul_(-0.5).exp_().mul_(x).mul_(_INV_SQRT_2PI)  # x phi(x)
        return cdf.add_(x_pdf).mul_(grad_y)


class _GeluTanh(torch.autograd.Function):
    """GELU(x) ~= x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)   (the form GPT-2 uses).

    Backward: with t = tanh(u),  d/dx = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        u = _SQRT_2_OVER_PI * (x + _TANH_COEF * x * x * x)
        return 0.5 * x * (1.0 + torch.tanh(u))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        x2 = x * x
        t = torch.tanh(_SQRT_2_OVER_PI * x * (1.0 + _TANH_COEF * x2))
        du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_COEF * x2)
        return grad_y * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU, x Phi(x): BERT's activation ("gelu" in config.json), = `F.gelu(x)`."""
    _check_float("gelu", x)
    return _Gelu.apply(x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """Tanh-approximated GELU: GPT-2's activation ("gelu_new"), = `F.gelu(x, approximate="tanh")`."""
    _check_float("gelu_tanh", x)
    return _GeluTanh.apply(x)


# config.json's hidden_act -> (readable, fused). "gelu_new" and "gelu_pytorch_tanh" are two names the
# public checkpoints use for the same tanh approximation.
_ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "gelu": (gelu, F.gelu),
    "gelu_new": (gelu_tanh, lambda x: F.gelu(x, approximate="tanh")),
    "gelu_pytorch_tanh": (gelu_tanh, lambda x: F.gelu(x, approximate="tanh")),
}
ACTIVATION_NAMES = tuple(_ACTIVATIONS)


def activation(name: str, fast: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation a config's `hidden_act` names: the hand-written one, or PyTorch's fused kernel
    for the same formula when `fast` is true."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; expected one of {ACTIVATION_NAMES}")
    readable, fused = _ACTIVATIONS[name]
    return fused if fast else readable


# ----------------------------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------------------------


class _Dropout(torch.autograd.Function):
    """Inverted dropout (Srivastava et al. 2014, JMLR, sec. 4 and fig. 2): keep each element with
    probability 1 - p and divide the kept ones by 1 - p, so E[y] = x and nothing changes at eval.

    Backward: dy/dx = keep / (1 - p). The keep mask is saved as bool (1 byte per element, where a
    float mask costs 4); for attention probabilities (B, H, T, T) that is most of a layer's memory.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        ctx.scale = 1.0 / (1.0 - p)
        # Uniforms in float32 even for half inputs (a bfloat16 uniform has only 256 levels), turned
        # in place into the multiplier 0 or 1/(1-p): P(u >= p) = 1 - p. A float multiply is several
        # times faster on the CPU than a multiply by a bool tensor or a `where`.
        multiplier = torch.rand(x.shape, device=x.device).ge_(p).mul_(ctx.scale)
        ctx.save_for_backward(multiplier.bool())
        return x * multiplier.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad_y * keep.to(grad_y.dtype).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero each element with probability p and scale the rest by 1 / (1 - p), when `training`;
    the identity otherwise. Same distribution as `F.dropout` (not the same random draws)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:  # everything dropped; 1 / (1 - p) would be inf
        return x * 0.0
    return _Dropout.apply(x, p)


class Dropout(nn.Module):
    """`dropout` as a module: active in `train()` mode, the identity in `eval()` mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ----------------------------------------------------------------------------------------------------
# Layer normalisation
# ----------------------------------------------------------------------------------------------------


class _LayerNorm(torch.autograd.Function):
    """Over the last dimension (size C), per row (Ba et al. 2016, "Layer Normalization", eq. 4):
        mu = mean(x),  var = mean((x - mu)^2)  (biased),  r = 1 / sqrt(var + eps)
        xhat = (x - mu) r,   y = xhat * w + b
    Backward (lesson 03), with gh = g * w:
        dx = r (gh - mean(gh) - xhat * mean(gh * xhat)),   dw = sum_rows g * xhat,   db = sum_rows g
    Saved: xhat (one tensor the size of x), r (one scalar per row) and w.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        z = x.to(_compute_dtype(x))
        var, mean = torch.var_mean(z, dim=-1, correction=0, keepdim=True)  # (..., 1) each, biased var
        rstd = torch.rsqrt(var + eps)  # (..., 1)
        xhat = (z - mean).mul_(rstd)  # (..., C)
        ctx.save_for_backward(xhat, rstd, weight)
        return torch.addcmul(bias.to(z.dtype), xhat, weight.to(z.dtype)).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        xhat, rstd, weight = ctx.saved_tensors
        size = xhat.shape[-1]
        g = grad_y.to(xhat.dtype).reshape(-1, size)  # (N, C): one row per normalised vector
        xh = xhat.reshape(-1, size)  # (N, C)
        w = weight.to(xhat.dtype)
        g_xhat = g * xh  # (N, C)
        grad_weight = g_xhat.sum(dim=0).to(weight.dtype)
        grad_bias = g.sum(dim=0).to(weight.dtype)
        # With gh = g * w (the gradient reaching xhat), the two row means are dot products with w:
        # mean(gh) = g @ w / C   and   mean(gh * xhat) = (g * xhat) @ w / C.
        mean_gh = (g @ w).div_(size)[:, None]  # (N, 1)
        mean_gh_xhat = (g_xhat @ w).div_(size)[:, None]  # (N, 1)
        grad_x = (g * w).sub_(mean_gh).addcmul_(xh, mean_gh_xhat, value=-1.0)
        grad_x = grad_x.view(xhat.shape).mul_(rstd)  # times r = 1 / sqrt(var + eps)
        return grad_x.to(grad_y.dtype), grad_weight, grad_bias, None


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension with affine weight and bias of shape (C,);
    the same numbers as `F.layer_norm(x, (C,), weight, bias, eps)`."""
    _check_float("layer_norm", x)
    size = x.shape[-1:] if x.dim() else ()
    if tuple(weight.shape) != tuple(size) or tuple(bias.shape) != tuple(size):
        raise ValueError(
            f"layer_norm: weight {tuple(weight.shape)} and bias {tuple(bias.shape)} must both have the "
            f"shape of the last dimension of x {tuple(x.shape)}, i.e. {tuple(size)}"
        )
    return _LayerNorm.apply(x, weight, bias, float(eps))


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension, with parameters `weight` and `bias` (the checkpoint names).

    `fast=False` runs the hand-written `layer_norm` above; `fast=True` runs `F.layer_norm`, PyTorch's
    fused kernel for the same formula (the `attn_impl="sdpa"` fast path).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, fast: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.eps = eps
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1:] != self.weight.shape:
            raise ValueError(
                f"LayerNorm({self.weight.shape[0]}): input of shape {tuple(x.shape)} does not end in "
                f"{self.weight.shape[0]} features"
            )
        if self.fast:
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, fast={self.fast}"
