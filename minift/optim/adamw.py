"""AdamW written out: Adam's moment estimates with bias correction, plus decoupled weight decay.

References: Kingma & Ba, "Adam" (2015), Algorithm 1; Loshchilov & Hutter, "Decoupled Weight Decay
Regularization" (2019), Algorithm 2. Same numbers and the same state names (`step`, `exp_avg`,
`exp_avg_sq`) as `torch.optim.AdamW`, so `state_dict()` moves between the two. The lesson is
`lessons/08-adamw-and-clipping.md`; `tests/test_optim.py` compares 100 steps with torch.

`param_groups(model, weight_decay)` builds the usual two groups: matrices decay, biases and
LayerNorm parameters do not.
"""

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay; `foreach=True` runs the same math on lists of tensors at once;
    `fused=True` hands the whole update to torch's fused kernel (`torch._fused_adamw_`, the kernel of
    `torch.optim.AdamW(fused=True)`): one pass over p, g, m, v per tensor instead of one per equation,
    for the memory-bound optimizer of a large model (lesson 22). Same state, same state_dict.

    Per parameter p with gradient g, at step t (lr = the group's learning rate, wd its weight decay):
        p   <- p - lr * wd * p                      decoupled decay, before the Adam update (as torch)
        m   <- b1 m + (1 - b1) g                    first moment, Alg. 1 line 7 (Kingma & Ba)
        v   <- b2 v + (1 - b2) g^2                  second moment, line 8
        p   <- p - lr * m_hat / (sqrt(v_hat) + eps) with m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        foreach: bool = False,
        fused: bool = False,
    ) -> None:
        _check_hyperparameters(lr, betas, eps, weight_decay)
        if foreach and fused:
            raise ValueError("AdamW: foreach=True and fused=True are two fast paths; choose one")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "foreach": foreach,
                    "fused": fused}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        # Groups may override any hyper-parameter; check the overrides as strictly as the defaults.
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        for p in group["params"]:
            if not p.is_floating_point():
                raise ValueError(f"AdamW updates real floating-point parameters; got dtype {p.dtype}")

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient; returns closure() if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise ValueError("AdamW does not support sparse gradients (use a dense embedding)")
                self._init_state(p)
            if group.get("fused", False):
                self._fused_update(group, params)
            elif group.get("foreach", False):
                self._foreach_update(group, params)
            else:
                for p in params:
                    self._update(group, p)
        return loss

    def _init_state(self, p: torch.Tensor) -> None:
        state = self.state[p]
        if len(state) == 0:
            # `step` is a float32 CPU tensor, as in torch, so state_dicts load into either optimizer.
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, group: dict, p: torch.Tensor) -> None:
        """The readable path: one parameter, one line per equation."""
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state, grad = self.state[p], p.grad
        state["step"] += 1
        t = state["step"].item()
        # Decoupled decay (Loshchilov & Hutter, Alg. 2 line 12): shrink p directly instead of adding
        # wd * p to the gradient, so the decay is not divided by sqrt(v) like the gradient is.
        if wd != 0:
            p.mul_(1 - lr * wd)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(beta1).add_(grad, alpha=1 - beta1)  # m_t = b1 m + (1 - b1) g
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v_t = b2 v + (1 - b2) g^2
        # Bias correction: m and v start at 0, so early on they underestimate E[g] and E[g^2] by the
        # factors (1 - b^t) (Kingma & Ba, sec. 3). Dividing by them gives m_hat and v_hat.
        step_size = lr / (1 - beta1**t)
        denom = v.sqrt() / math.sqrt(1 - beta2**t) + eps  # sqrt(v_hat) + eps
        p.addcdiv_(m, denom, value=-step_size)  # p -= lr * m_hat / (sqrt(v_hat) + eps)

    def _foreach_update(self, group: dict, params: list[torch.Tensor]) -> None:
        """The fast path: the same equations as `_update`, each one a single `torch._foreach_*` call
        over all parameters of one device and dtype (fewer kernel launches, same numbers)."""
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        buckets: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            buckets.setdefault((p.device, p.dtype), []).append(p)
        for bucket in buckets.values():
            states = [self.state[p] for p in bucket]
            grads = [p.grad for p in bucket]
            m = [s["exp_avg"] for s in states]
            v = [s["exp_avg_sq"] for s in states]
            for s in states:  # parameters that joined late have their own step count
                s["step"] += 1
            steps = [s["step"].item() for s in states]
            if wd != 0:
                torch._foreach_mul_(bucket, 1 - lr * wd)
            torch._foreach_mul_(m, beta1)
            torch._foreach_add_(m, grads, alpha=1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, [math.sqrt(1 - beta2**t) for t in steps])
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(bucket, m, denom, [-lr / (1 - beta1**t) for t in steps])


    def _fused_update(self, group: dict, params: list[torch.Tensor]) -> None:
        """torch's fused AdamW kernel on the same state. It computes the equations of `_update` in one
        loop per element, in its own order: equal to `torch.optim.AdamW(fused=True)` bit for bit, and
        to the loop within rounding (tests/test_optim.py)."""
        (beta1, beta2), buckets = group["betas"], {}
        for p in params:
            buckets.setdefault((p.device, p.dtype), []).append(p)
        for (device, _), bucket in buckets.items():
            states = [self.state[p] for p in bucket]
            for s in states:
                s["step"] += 1
            # The kernel reads the step counts on the parameters' device; minift keeps them on the CPU.
            steps = [s["step"].to(device) for s in states]
            torch._fused_adamw_(bucket, [p.grad for p in bucket], [s["exp_avg"] for s in states],
                                [s["exp_avg_sq"] for s in states], [], steps, lr=group["lr"], beta1=beta1,
                                beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                                amsgrad=False, maximize=False)


def _check_hyperparameters(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    _check_finite_nonnegative("lr", lr)
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"AdamW: betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
            raise ValueError(f"AdamW: betas[{i}] must be in [0, 1), got {beta!r}")
    _check_finite_nonnegative("eps", eps)
    _check_finite_nonnegative("weight_decay", weight_decay)


def _check_finite_nonnegative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < math.inf):
        raise ValueError(f"AdamW: {name} must be a finite number >= 0, got {value!r}")


def _is_norm(module: nn.Module) -> bool:
    # torch's LayerNorm, or a hand-written one (minift.nn, or any class named like it).
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("LayerNorm")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay: tuple[str, ...] = ("bias", "LayerNorm.weight", "LayerNorm.bias"),
) -> list[dict]:
    """Two AdamW groups over the trainable parameters: [decayed, not decayed (weight_decay=0)].

    A parameter skips decay when its name contains one of `no_decay` (the BERT fine-tuning convention)
    or it belongs to a LayerNorm module, whatever it is called (GPT-2's `ln_1`, `ln_f`). Why: decay
    pulls weights towards 0; a LayerNorm gain pulled to 0 switches its feature off, and biases do not
    multiply the input, so shrinking them does not limit the model's capacity (lesson 08).
    """
    _check_finite_nonnegative("weight_decay", weight_decay)  # AdamW's own check, where the value arrives
    norm_params = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # frozen parameters stay out of the optimizer entirely
        skip = id(p) in norm_params or any(pattern in name for pattern in no_decay)
        (keep if skip else decay).append(p)
    if not decay and not keep:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (all requires_grad=False)")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": keep, "weight_decay": 0.0},
    ]
