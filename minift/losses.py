"""Loss functions written by hand: cross-entropy and binary cross-entropy, each with a derived backward.

Every loss is a `torch.autograd.Function`: the forward is the formula, the backward is its derivative
worked out on paper (lesson `lessons/07-cross-entropy.md`), not autograd's record of the forward.
They follow the semantics of `torch.nn.functional.cross_entropy`, `binary_cross_entropy_with_logits`
and `binary_cross_entropy` exactly, corner cases included; `tests/test_losses.py` checks that in
float64 to 1e-10 and runs `torch.autograd.gradcheck` on every backward.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

REDUCTIONS = ("none", "mean", "sum")
# Half-precision logits are turned into a loss in float32, as torch.autocast runs these losses: a
# float16 log-sum-exp over a 30k vocabulary loses the digits the loss is made of. The cast is an
# ordinary autograd op, so the gradient still arrives in the logits' own dtype.
_HALF = (torch.float16, torch.bfloat16)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in _HALF else x


def log_softmax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log softmax(z) = z - logsumexp(z), with the max subtracted first so exp never overflows.

    logsumexp(z) = m + log(sum_j exp(z_j - m)) with m = max_j z_j holds for any m; choosing the max
    makes every exponent <= 0 (Goodfellow et al., Deep Learning, sec. 4.1, "softmax ... stabilized").
    """
    m = z.amax(dim=dim, keepdim=True)
    return z - m - torch.log(torch.exp(z - m).sum(dim=dim, keepdim=True))


def _check_tensors(**tensors: object) -> None:
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_constant(name: str, tensor: torch.Tensor | None) -> None:
    # Like torch, class/element weights are constants: there is no derived gradient for them.
    if tensor is not None and tensor.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name} must not require grad: the losses have no gradient for it (detach it)")


def _reduce(per_element: torch.Tensor, reduction: str, normaliser: torch.Tensor) -> torch.Tensor:
    if reduction == "none":
        return per_element
    if reduction == "sum":
        return per_element.sum()
    return per_element.sum() / normaliser


# ----------------------------------------------------------------------------------------------------
# Cross-entropy over C classes
# ----------------------------------------------------------------------------------------------------


def _check_cross_entropy_args(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
) -> None:
    _check_tensors(logits=logits, target=target)
    _check_reduction(reduction)
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(
            f"target must hold class indices (an integer tensor), got dtype {target.dtype}; "
            "probability targets are not supported"
        )
    if logits.dim() == 0:
        raise ValueError("logits must have a class dimension: shape (C,), (N, C) or (N, C, d1, ...)")
    expected = () if logits.dim() == 1 else tuple(logits.shape[:1] + logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}: "
            f"expected target shape {expected} (logits without the class dimension 1)"
        )
    num_classes = logits.shape[0] if logits.dim() == 1 else logits.shape[1]
    if num_classes == 0:
        raise ValueError(f"logits shape {tuple(logits.shape)} has no classes (C = 0)")
    if weight is not None and tuple(weight.shape) != (num_classes,):
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not match the {num_classes} classes of logits "
            f"shape {tuple(logits.shape)}: expected ({num_classes},)"
        )
    _check_constant("weight", weight)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    bad = target[(target != ignore_index) & ((target < 0) | (target >= num_classes))]
    if bad.numel() > 0:
        raise ValueError(
            f"target holds class index {bad[0].item()}, outside [0, {num_classes}) for C={num_classes} "
            f"classes (and not ignore_index={ignore_index})"
        )


class _CrossEntropy(torch.autograd.Function):
    """Rows of logits z (M, C), targets t (M,); the class weights w default to all ones.

    Per row, with eps = label_smoothing and the smoothed target q_c = (1 - eps) w_t [c = t] + eps/C w_c
    (torch weights the smoothing term by each class's own weight, not by w_t):
        loss = -sum_c q_c log p_c,   p = softmax(z)
        dloss/dz_c = p_c * sum_k q_k - q_c          (lesson 07 derives it; sum_k q_k = 1 if w = 1)
    """

    @staticmethod
    def forward(ctx, z, t, w, ignore_index, eps, reduction):
        num_classes = z.shape[1]
        valid = t != ignore_index  # (M,)
        t_safe = torch.where(valid, t, torch.zeros_like(t))  # any in-range index; masked out below
        if w is None:
            w = torch.ones(num_classes, dtype=z.dtype, device=z.device)
        w = w.to(z.dtype)
        logp = log_softmax(z, dim=1)  # (M, C)
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        w_t = torch.where(valid, w[t_safe], zero)  # (M,) weight of each row's target, 0 if ignored
        nll = torch.where(valid, -logp.gather(1, t_safe[:, None])[:, 0] * w_t, zero)
        loss = (1.0 - eps) * nll
        if eps > 0.0:  # skipped at eps = 0 so a -inf logit off the target stays harmless, as in torch
            smooth = torch.where(valid, -(logp * w).sum(dim=1), zero)  # (M,)
            loss = loss + eps / num_classes * smooth
        # "mean" divides by the total weight of the kept targets (the count when w is all ones).
        normaliser = w_t.sum()
        ctx.save_for_backward(logp, t_safe, valid, w, w_t, normaliser)
        ctx.eps, ctx.reduction = eps, reduction
        return _reduce(loss, reduction, normaliser)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logp, t_safe, valid, w, w_t, normaliser = ctx.saved_tensors
        eps, num_classes = ctx.eps, logp.shape[1]
        p = torch.exp(logp)  # (M, C)
        # q = (1 - eps) w_t onehot(t) + eps/C w, the smoothed, weighted target of each row.
        q = (eps / num_classes) * w.expand_as(p).clone()
        q.scatter_add_(1, t_safe[:, None], ((1.0 - eps) * w_t)[:, None])
        grad = p * q.sum(dim=1, keepdim=True) - q  # (M, C)
        if ctx.reduction == "none":
            grad = grad * grad_out[:, None]
        elif ctx.reduction == "sum":
            grad = grad * grad_out
        else:
            grad = grad * (grad_out / normaliser)
        # Ignored rows get exactly 0, even when "mean" divides by a zero normaliser (NaN elsewhere).
        grad = torch.where(valid[:, None], grad, torch.zeros_like(grad))
        return grad, None, None, None, None, None


# The label that marks a position the loss skips: padding, special tokens, a word's later sub-tokens,
# unmasked positions of a masked LM. -100 is torch's and transformers' convention; every minift
# module that writes or reads such labels uses this one name.
IGNORE_INDEX = -100


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    fast: bool = False,
) -> torch.Tensor:
    """Softmax cross-entropy, the same numbers as `torch.nn.functional.cross_entropy` (class indices).

    logits: (C,), (N, C) or (N, C, d1, ...); target: (), (N,) or (N, d1, ...) integer class indices.
    weight: (C,) per-class weights. Targets equal to ignore_index contribute nothing.
    float16/bfloat16 logits give a float32 loss (computed in float32, as under torch.autocast).
    reduction "mean" divides by the summed weight of the kept targets, so when every target is
    ignored the result is 0/0 = NaN, exactly as torch (the gradient is then all zeros).

    fast=True (the models' `attn_impl="sdpa"` path) checks the same arguments, then hands the same
    formula to `F.cross_entropy`, torch's fused kernel: the hand-written version builds its (M, C)
    tensors one operation at a time (log-softmax, then p, q and the gradient in backward), which for a
    language model's 50,257-way softmax is 12-18% of a GPT-2 step on a CPU where torch's takes 2-5%
    (lesson 22, `benchmarks/profile_step.py`). `tests/test_losses.py` checks both give the same numbers.
    """
    _check_cross_entropy_args(logits, target, weight, ignore_index, label_smoothing, reduction)
    if fast:  # the same checks above: a bad target is refused with the same message on both paths
        return F.cross_entropy(_upcast(logits), target, weight=None if weight is None else weight.to(_upcast(logits).dtype),
                               ignore_index=ignore_index, label_smoothing=float(label_smoothing), reduction=reduction)
    if logits.dim() == 1:  # one example: (C,) -> (1, C)
        loss = cross_entropy(logits[None], target[None], weight, ignore_index, label_smoothing, reduction)
        return loss[0] if reduction == "none" else loss
    num_classes = logits.shape[1]
    rows = _upcast(logits).movedim(1, -1).reshape(-1, num_classes)  # (N * d1 * ..., C)
    loss = _CrossEntropy.apply(
        rows, target.reshape(-1), weight, ignore_index, float(label_smoothing), reduction
    )
    return loss.reshape(target.shape) if reduction == "none" else loss


# ----------------------------------------------------------------------------------------------------
# Binary cross-entropy: on logits (stable) and on probabilities
# ----------------------------------------------------------------------------------------------------


def _check_binary_args(name: str, x: torch.Tensor, target: torch.Tensor, reduction: str) -> None:
    _check_tensors(**{name: x, "target": target})
    _check_reduction(reduction)
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not target.is_floating_point():
        raise ValueError(f"target must be a floating-point tensor of 0..1 labels, got dtype {target.dtype}")
    if target.shape != x.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match {name} shape {tuple(x.shape)}: "
            "they must be equal"
        )


def _check_broadcasts(name: str, tensor: torch.Tensor | None, shape: torch.Size, like: str) -> None:
    if tensor is None:
        return
    try:
        out = torch.broadcast_shapes(tensor.shape, shape)
    except RuntimeError:
        out = None
    if out != shape:
        raise ValueError(
            f"{name} shape {tuple(tensor.shape)} does not broadcast to {like} shape {tuple(shape)}"
        )
    _check_constant(name, tensor)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): the exponent is never positive, so no overflow."""
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


class _BCEWithLogits(torch.autograd.Function):
    """With s = sigmoid(z), class weight w and positive weight a (pos_weight):
    loss = -w [a y log s + (1 - y) log(1 - s)] = w [(1 - y) z + (1 + (a - 1) y) softplus(-z)]
    dloss/dz = w [(1 + (a - 1) y) s - a y]     (= w (s - y) when a = 1)
    dloss/dy = w [(a - 1) softplus(-z) - z]
    """

    @staticmethod
    def forward(ctx, z, y, w, a, reduction):
        log_weight = 1.0 if a is None else 1.0 + (a - 1.0) * y
        loss = (1.0 - y) * z + log_weight * _softplus(-z)
        if w is not None:
            loss = loss * w
        ctx.save_for_backward(z, y, w, a)
        ctx.reduction = reduction
        return _reduce(loss, reduction, torch.tensor(z.numel(), dtype=z.dtype, device=z.device))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        z, y, w, a = ctx.saved_tensors
        s = torch.sigmoid(z)
        if a is None:
            grad_z, grad_y = s - y, -z
        else:
            grad_z = (1.0 + (a - 1.0) * y) * s - a * y
            grad_y = (a - 1.0) * _softplus(-z) - z
        scale = grad_out / z.numel() if ctx.reduction == "mean" else grad_out
        if w is not None:
            scale = scale * w
        grad_z, grad_y = grad_z * scale, grad_y * scale
        return grad_z, (grad_y if ctx.needs_input_grad[1] else None), None, None, None


def binary_cross_entropy_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sigmoid + binary cross-entropy in one stable formula, as `F.binary_cross_entropy_with_logits`.

    target has the shape of logits (labels in [0, 1], soft labels allowed); weight broadcasts to it;
    pos_weight (usually (C,), broadcast along the last dimension) multiplies the positive term.
    """
    _check_binary_args("logits", logits, target, reduction)
    _check_broadcasts("weight", weight, logits.shape, "logits")
    _check_broadcasts("pos_weight", pos_weight, logits.shape, "logits")
    return _BCEWithLogits.apply(_upcast(logits), _upcast(target), weight, pos_weight, reduction)


class _BCE(torch.autograd.Function):
    """On probabilities p, with torch's guards: each log is clamped at -100 so p = 0 or 1 gives a
    finite loss, and the derivative's denominator p (1 - p) is kept above 1e-12.
        loss = -w [y log p + (1 - y) log(1 - p)]
        dloss/dp = w (p - y) / (p (1 - p))
        dloss/dy = w [log(1 - p) - log p]          (with the clamped logs)
    """

    # torch keeps this guard as a float32 constant, so it is 1e-12 rounded to float32 (~0.99999999600e-12)
    # even for float64 inputs; using the same number keeps p = 0 or 1 gradients identical.
    EPSILON = torch.tensor(1e-12, dtype=torch.float32).item()

    @staticmethod
    def forward(ctx, p, y, w, reduction):
        log_p, log_1mp = torch.log(p).clamp(min=-100), torch.log1p(-p).clamp(min=-100)
        loss = -(y * log_p + (1.0 - y) * log_1mp)
        if w is not None:
            loss = loss * w
        ctx.save_for_backward(p, y, w)
        ctx.reduction = reduction
        return _reduce(loss, reduction, torch.tensor(p.numel(), dtype=p.dtype, device=p.device))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        p, y, w = ctx.saved_tensors
        grad_p = (p - y) / (p * (1.0 - p)).clamp(min=_BCE.EPSILON)
        grad_y = torch.log1p(-p).clamp(min=-100) - torch.log(p).clamp(min=-100)
        scale = grad_out / p.numel() if ctx.reduction == "mean" else grad_out
        if w is not None:
            scale = scale * w
        return grad_p * scale, (grad_y * scale if ctx.needs_input_grad[1] else None), None, None


def binary_cross_entropy(
    probs: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Binary cross-entropy on probabilities, as `F.binary_cross_entropy`; prefer the logits form,
    which never takes the log of a rounded probability."""
    _check_binary_args("probs", probs, target, reduction)
    _check_broadcasts("weight", weight, probs.shape, "probs")
    outside = probs[(probs < 0) | (probs > 1) | torch.isnan(probs)]
    if outside.numel() > 0:
        raise ValueError(
            f"probs must lie in [0, 1], found {outside[0].item()}; pass logits to "
            "binary_cross_entropy_with_logits instead"
        )
    return _BCE.apply(probs, target, weight, reduction)
