"""Global gradient-norm clipping: one norm over all gradients, one scale factor for all of them.

Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks" (2013), sec. 3.2:
when the gradient's norm exceeds a threshold, rescale it to the threshold. The direction is kept;
only the step length is capped. Same semantics as `torch.nn.utils.clip_grad_norm_`
(`tests/test_optim.py` checks it); the lesson is `lessons/08-adamw-and-clipping.md`.
"""

import math
from collections.abc import Iterable

import torch


def clip_grad_norm_(
    parameters: torch.Tensor | Iterable[torch.Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> torch.Tensor:
    """Scale the gradients in place so their global `norm_type`-norm is at most `max_norm`.

    The global norm treats all gradients as one long vector: ||g||_p = (sum_i ||g_i||_p^p)^(1/p),
    which equals the p-norm of the per-tensor norms (for p = inf: the largest |g|). Parameters without
    a gradient are skipped. Returns the norm measured *before* clipping (a 0-d tensor).
    """
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    _check_arguments(max_norm, norm_type)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device  # the norms of gradients on several devices meet on the first one
    per_tensor = torch.stack([torch.linalg.vector_norm(g, norm_type).to(device) for g in grads])  # (G,)
    total_norm = torch.linalg.vector_norm(per_tensor, norm_type)
    if error_if_nonfinite and not torch.isfinite(total_norm):
        bad = [i for i, norm in enumerate(per_tensor.tolist()) if not math.isfinite(norm)]
        raise RuntimeError(
            f"clip_grad_norm_: the total {norm_type}-norm of the gradients is {total_norm.item()}; "
            f"non-finite gradients at positions {bad} of the parameters that have a gradient. "
            "Pass error_if_nonfinite=False to scale by the non-finite norm anyway"
        )
    # The 1e-6 keeps the division finite when every gradient is 0 (torch adds the same constant).
    # Clamping at 1 means gradients already inside the ball are multiplied by exactly 1: untouched.
    scale = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.device, g.dtype))
    return total_norm


def _check_arguments(max_norm: float, norm_type: float) -> None:
    if not (isinstance(max_norm, (int, float)) and max_norm >= 0):
        raise ValueError(f"clip_grad_norm_: max_norm must be a number >= 0, got {max_norm!r}")
    if not (isinstance(norm_type, (int, float)) and norm_type > 0):
        raise ValueError(f"clip_grad_norm_: norm_type must be > 0 (or math.inf), got {norm_type!r}")
