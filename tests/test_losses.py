"""minift.losses against torch.nn.functional: values and derived gradients, float64 to 1e-10.

Every case draws random logits/targets for a seed, compares the loss and the gradient (for a random
upstream gradient, so 'none' is fully exercised) with torch, and gradcheck confirms the hand-derived
backward against finite differences independently of torch.
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from minift.losses import binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, log_softmax

F64 = torch.float64
TOL64 = 1e-10  # float64 math: the two implementations differ only by rounding (~1e-16 relative)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def loss_and_grads(fn, inputs, upstream_seed=0):
    """Loss value and the gradients of <loss, g> for a random upstream g w.r.t. every input."""
    loss = fn(*inputs)
    g = torch.randn(loss.shape, dtype=loss.dtype, generator=torch.Generator().manual_seed(upstream_seed))
    grads = torch.autograd.grad(loss, inputs, g)
    return loss.detach(), grads


def max_diff(a, b):
    return (a - b).abs().max().item() if a.numel() else 0.0


@pytest.mark.parametrize("shape, dim", [((5, 7), -1), ((3, 4, 6), 1), ((2, 3, 4), 0)])
@pytest.mark.parametrize("scale", [1.0, 1e4])  # 1e4: exp would overflow without the max shift
def test_log_softmax_matches_torch(shape, dim, scale):
    z = scale * torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(0))
    diff = max_diff(log_softmax(z, dim), F.log_softmax(z, dim))
    assert diff <= TOL64 * scale, diff  # relative to the logits' size: the result is O(scale)


# ---------------------------------------------------------------------------------------------------
# cross_entropy
# ---------------------------------------------------------------------------------------------------

CE_SHAPES = [(8, 5), (4, 3, 6), (2, 4, 3, 5)]  # (N, C), (N, C, d1), (N, C, d1, d2)


def make_ce_case(shape, seed, with_weight, with_ignored, ignore_index=-100):
    gen = torch.Generator().manual_seed(seed)
    num_classes = shape[1]
    logits = (3 * torch.randn(shape, dtype=F64, generator=gen)).requires_grad_()
    target = torch.randint(0, num_classes, shape[:1] + shape[2:], generator=gen)
    if with_ignored:  # about a third of the targets ignored, but never all of them
        mask = torch.rand(target.shape, generator=gen) < 0.35
        mask.view(-1)[0] = False
        target[mask] = ignore_index
    weight = torch.rand(num_classes, dtype=F64, generator=gen) + 0.1 if with_weight else None
    return logits, target, weight


@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("with_weight", [False, True], ids=["no-weight", "weight"])
@pytest.mark.parametrize("with_ignored", [False, True], ids=["no-ignored", "ignored"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_matches_torch(shape, seed, with_weight, with_ignored, label_smoothing, reduction):
    logits, target, weight = make_ce_case(shape, seed, with_weight, with_ignored)
    kwargs = {"weight": weight, "label_smoothing": label_smoothing, "reduction": reduction}
    ours, (g_ours,) = loss_and_grads(lambda z: cross_entropy(z, target, **kwargs), (logits,), seed)
    ref, (g_ref,) = loss_and_grads(lambda z: F.cross_entropy(z, target, **kwargs), (logits,), seed)
    assert ours.shape == ref.shape
    assert max_diff(ours, ref) <= TOL64, f"loss differs by {max_diff(ours, ref)}"
    assert max_diff(g_ours, g_ref) <= TOL64, f"gradient differs by {max_diff(g_ours, g_ref)}"


@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("with_weight", [False, True], ids=["no-weight", "weight"])
@pytest.mark.parametrize("with_ignored", [False, True], ids=["no-ignored", "ignored"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_fast_cross_entropy_equals_the_readable_one(shape, seed, with_weight, with_ignored, label_smoothing,
                                                    reduction):
    """fast=True (the models' sdpa path, torch's fused kernel) gives the readable version's numbers."""
    logits, target, weight = make_ce_case(shape, seed, with_weight, with_ignored)
    kwargs = {"weight": weight, "label_smoothing": label_smoothing, "reduction": reduction}
    slow, (g_slow,) = loss_and_grads(lambda z: cross_entropy(z, target, **kwargs), (logits,), seed)
    fast, (g_fast,) = loss_and_grads(lambda z: cross_entropy(z, target, fast=True, **kwargs), (logits,), seed)
    assert fast.shape == slow.shape
    assert max_diff(fast, slow) <= TOL64, f"loss differs by {max_diff(fast, slow)}"
    assert max_diff(g_fast, g_slow) <= TOL64, f"gradient differs by {max_diff(g_fast, g_slow)}"


@pytest.mark.parametrize("rows, vocab, seed", [(254, 50257, 0), (64, 30522, 1), (7, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_cross_entropy_over_a_vocabulary_in_float32_and_bf16(rows, vocab, seed, dtype):
    """A language model's shapes (GPT-2's and BERT's vocabularies, -100 on some rows): float32 sums in
    another order, so 1e-6 on a loss of about log(V) ~ 11 and on gradients of about 1/(rows V)."""
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(rows, vocab, generator=gen)).to(dtype).requires_grad_()
    target = torch.randint(0, vocab, (rows,), generator=gen)
    target[::5] = -100
    slow = cross_entropy(logits, target)
    (g_slow,) = torch.autograd.grad(slow, logits)
    fast = cross_entropy(logits, target, fast=True)
    (g_fast,) = torch.autograd.grad(fast, logits)
    assert fast.dtype == slow.dtype == torch.float32 and g_fast.dtype == g_slow.dtype == dtype
    assert max_diff(fast, slow) <= 1e-5 * max(1.0, slow.abs().item()), f"loss {fast.item()} vs {slow.item()}"
    tolerance = 1e-7 if dtype == torch.float32 else 2 ** -8 * g_slow.abs().max().item()  # bf16: one rounding
    assert max_diff(g_fast.float(), g_slow.float()) <= tolerance


@pytest.mark.parametrize("logits, target, message", [
    (torch.randn(3, 4), torch.tensor([0, 4, 1]), r"class index 4, outside \[0, 4\)"),
    (torch.randn(3, 4), torch.zeros(2, dtype=torch.long), r"does not match logits shape"),
    (torch.randn(3, 4), torch.zeros(3), r"class indices"),
    (torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long), r"floating-point"),
])
def test_fast_cross_entropy_refuses_what_the_readable_one_refuses(logits, target, message):
    for fast in (False, True):
        with pytest.raises(ValueError, match=message):
            cross_entropy(logits, target, fast=fast)


@pytest.mark.parametrize("ignore_index", [-1, 2])
def test_cross_entropy_custom_ignore_index(ignore_index):
    # ignore_index may be a real class (2): those targets are dropped, the class stays in the softmax.
    logits, target, weight = make_ce_case((10, 4), 3, True, True, ignore_index=ignore_index)
    for label_smoothing in (0.0, 0.2):
        kwargs = {"weight": weight, "ignore_index": ignore_index, "label_smoothing": label_smoothing}
        ours, (g_ours,) = loss_and_grads(partial(cross_entropy, target=target, **kwargs), (logits,))
        ref, (g_ref,) = loss_and_grads(partial(F.cross_entropy, target=target, **kwargs), (logits,))
        assert max_diff(ours, ref) <= TOL64 and max_diff(g_ours, g_ref) <= TOL64


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_single_example(reduction):
    # torch also takes one unbatched example: logits (C,), target ().
    logits = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(4)).requires_grad_()
    target = torch.tensor(3)
    kwargs = {"label_smoothing": 0.1, "reduction": reduction}
    ours, (g_ours,) = loss_and_grads(lambda z: cross_entropy(z, target, **kwargs), (logits,))
    ref, (g_ref,) = loss_and_grads(lambda z: F.cross_entropy(z, target, **kwargs), (logits,))
    assert ours.shape == ref.shape == ()
    assert max_diff(ours, ref) <= TOL64 and max_diff(g_ours, g_ref) <= TOL64


@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("with_weight", [False, True])
def test_cross_entropy_gradcheck(label_smoothing, with_weight):
    # Finite differences, not torch: checks the derived backward p * sum(q) - q on its own.
    for shape, reduction in [((5, 4), "mean"), ((3, 4, 2), "none"), ((2, 3, 2, 2), "sum")]:
        logits, target, weight = make_ce_case(shape, 7, with_weight, True)
        fn = partial(
            cross_entropy, target=target, weight=weight, label_smoothing=label_smoothing, reduction=reduction
        )
        assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-8)


def test_cross_entropy_all_ignored_is_nan_like_torch():
    # "mean" divides by the weight of the kept targets, 0 here: 0/0 = NaN in both; the gradient is 0.
    logits = torch.randn(4, 3, dtype=F64, requires_grad=True)
    target = torch.full((4,), -100)
    for label_smoothing in (0.0, 0.1):
        kwargs = {"target": target, "label_smoothing": label_smoothing}
        ours, (g_ours,) = loss_and_grads(partial(cross_entropy, **kwargs), (logits,))
        ref, (g_ref,) = loss_and_grads(partial(F.cross_entropy, **kwargs), (logits,))
        assert torch.isnan(ours) and torch.isnan(ref)
        assert torch.equal(g_ours, g_ref) and not g_ours.any()
        assert cross_entropy(logits, target, reduction="sum").item() == 0.0


def test_cross_entropy_zero_total_weight_is_nan_like_torch():
    # Kept targets whose class weight is 0: the normaliser is 0 again, and torch gives NaN gradients.
    logits = torch.randn(3, 4, dtype=F64, requires_grad=True)
    target, weight = torch.tensor([0, 1, 2]), torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64)
    ours, (g_ours,) = loss_and_grads(lambda z: cross_entropy(z, target, weight), (logits,))
    ref, (g_ref,) = loss_and_grads(lambda z: F.cross_entropy(z, target, weight), (logits,))
    assert torch.isnan(ours) and torch.isnan(ref)
    assert torch.isnan(g_ours).all() and torch.isnan(g_ref).all()


def test_cross_entropy_is_stable_for_huge_logits():
    # Naive exp(1e4) overflows float32; log-sum-exp with the max subtracted does not.
    gen = torch.Generator().manual_seed(5)
    logits = (1e4 * torch.randn(16, 10, generator=gen)).requires_grad_()
    target = torch.randint(0, 10, (16,), generator=gen)
    ours, (g_ours,) = loss_and_grads(lambda z: cross_entropy(z, target, label_smoothing=0.1), (logits,))
    ref, (g_ref,) = loss_and_grads(lambda z: F.cross_entropy(z, target, label_smoothing=0.1), (logits,))
    assert torch.isfinite(ours) and torch.isfinite(g_ours).all()
    # The loss is ~1e4 here: 1e-7 relative (float32 rounding of an O(1e4) sum) is ~1e-3 absolute.
    assert torch.allclose(ours, ref, rtol=1e-6, atol=0), f"{ours.item()} vs {ref.item()}"
    assert max_diff(g_ours, g_ref) <= 1e-6  # gradients are probabilities / N: O(1/16)


def test_cross_entropy_minus_inf_logit_off_target_like_torch():
    # A masked-out class (-inf logit) is harmless without smoothing, and both give inf with smoothing.
    logits = torch.tensor([[0.0, -float("inf"), 1.0]], dtype=F64)
    target = torch.tensor([0])
    assert max_diff(cross_entropy(logits, target), F.cross_entropy(logits, target)) <= TOL64
    assert cross_entropy(logits, target, label_smoothing=0.1).item() == float("inf")
    assert F.cross_entropy(logits, target, label_smoothing=0.1).item() == float("inf")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_give_a_float32_loss_like_autocast(dtype):
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(6, 30, generator=gen).to(dtype).requires_grad_()
    target = torch.randint(0, 30, (6,), generator=gen)
    ours = cross_entropy(logits, target, label_smoothing=0.1)
    (g_ours,) = torch.autograd.grad(ours, logits)
    with torch.autocast("cpu", dtype=dtype):  # torch runs cross_entropy in float32 under autocast
        ref = F.cross_entropy(logits, target, label_smoothing=0.1)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert ours.dtype == ref.dtype == torch.float32 and g_ours.dtype == dtype
    assert max_diff(ours, ref) <= 1e-6  # both float32 sums over the same upcast numbers
    assert max_diff(g_ours.float(), g_ref.float()) <= 1e-6  # then rounded to the same half dtype
    probs_target = torch.rand(6, 30, generator=gen)
    ours = binary_cross_entropy_with_logits(logits, probs_target)
    with torch.autocast("cpu", dtype=dtype):
        ref = F.binary_cross_entropy_with_logits(logits, probs_target)
    assert ours.dtype == ref.dtype == torch.float32 and max_diff(ours, ref) <= 1e-6


def test_cross_entropy_over_real_vocabulary(minilm_dir):
    # A realistic large-C case: MLM-style logits over MiniLM's 30522 WordPiece tokens, made from the
    # real embedding matrix (tied output layer) and random hidden states.
    with safe_open(str(minilm_dir / "model.safetensors"), "pt") as f:
        embeddings = f.get_tensor("embeddings.word_embeddings.weight")  # (V, 384)
    gen = torch.Generator().manual_seed(6)
    hidden = torch.randn(12, embeddings.shape[1], generator=gen)
    target = torch.randint(0, embeddings.shape[0], (12,), generator=gen)
    target[3] = -100
    for dtype, tol in [(F64, TOL64), (torch.float32, 1e-5)]:  # float32: activations-level 1e-5
        logits = (hidden.to(dtype) @ embeddings.to(dtype).T).requires_grad_()  # (12, V)
        for label_smoothing in (0.0, 0.1):
            kwargs = {"target": target, "label_smoothing": label_smoothing}
            ours, (g_ours,) = loss_and_grads(partial(cross_entropy, **kwargs), (logits,))
            ref, (g_ref,) = loss_and_grads(partial(F.cross_entropy, **kwargs), (logits,))
            assert max_diff(ours, ref) <= tol, f"{dtype} loss differs by {max_diff(ours, ref)}"
            assert max_diff(g_ours, g_ref) <= tol, f"{dtype} gradient differs by {max_diff(g_ours, g_ref)}"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, 4, 1])), r"class index 4.*C=4"),
        (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, -2, 1])), r"class index -2.*C=4"),
        (lambda: cross_entropy(torch.randn(2, 4, 5), torch.tensor([[0, 1, 2, 3, 9]] * 2)), r"class index 9"),
        (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, 1])), r"target shape \(2,\).*\(3, 4\)"),
        (
            lambda: cross_entropy(torch.randn(3, 4, 2), torch.zeros(3, 4, dtype=torch.long)),
            r"expected target shape \(3, 2\)",
        ),
        (lambda: cross_entropy(torch.randn(3, 4), torch.zeros(3)), r"class indices"),
        (
            lambda: cross_entropy(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), torch.ones(5)),
            r"weight shape \(5,\)",
        ),
        (
            lambda: cross_entropy(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), reduction="avg"),
            r"reduction",
        ),
        (
            lambda: cross_entropy(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), label_smoothing=1.5),
            r"label_smoothing",
        ),
        (
            lambda: cross_entropy(
                torch.randn(3, 4), torch.zeros(3, dtype=torch.long), torch.ones(4, requires_grad=True)
            ),
            r"weight must not require grad",
        ),
        (
            lambda: cross_entropy(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long)),
            r"floating-point",
        ),
        (lambda: cross_entropy(torch.tensor(1.0), torch.tensor(0)), r"class dimension"),
        (lambda: cross_entropy(torch.zeros(3, 0), torch.zeros(3, dtype=torch.long)), r"no classes"),
    ],
)
def test_cross_entropy_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_losses_reject_non_tensors():
    with pytest.raises(TypeError, match=r"logits must be a torch.Tensor, got list"):
        cross_entropy([[0.0, 1.0]], torch.tensor([0]))
    with pytest.raises(TypeError, match=r"target must be a torch.Tensor, got list"):
        binary_cross_entropy_with_logits(torch.zeros(2), [0.0, 1.0])


# ---------------------------------------------------------------------------------------------------
# binary cross-entropy
# ---------------------------------------------------------------------------------------------------

BCE_SHAPES = [(7,), (6, 4), (2, 3, 4)]


def make_bce_case(shape, seed, weight_kind, with_pos_weight):
    gen = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(shape, dtype=F64, generator=gen)).requires_grad_()
    target = torch.rand(shape, dtype=F64, generator=gen)  # soft labels, as torch allows
    target[..., 0] = 1.0  # and some hard ones
    target = target.requires_grad_()
    weight = {
        None: None,
        "full": torch.rand(shape, dtype=F64, generator=gen),
        "last-dim": torch.rand(shape[-1:], dtype=F64, generator=gen),
    }[weight_kind]
    pos_weight = 3 * torch.rand(shape[-1:], dtype=F64, generator=gen) if with_pos_weight else None
    return logits, target, weight, pos_weight


@pytest.mark.parametrize("shape", BCE_SHAPES, ids=str)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("weight_kind", [None, "full", "last-dim"])
@pytest.mark.parametrize("with_pos_weight", [False, True], ids=["no-pos", "pos_weight"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_bce_with_logits_matches_torch(shape, seed, weight_kind, with_pos_weight, reduction):
    logits, target, weight, pos_weight = make_bce_case(shape, seed, weight_kind, with_pos_weight)
    kwargs = {"weight": weight, "pos_weight": pos_weight, "reduction": reduction}
    ours, g_ours = loss_and_grads(
        lambda z, y: binary_cross_entropy_with_logits(z, y, **kwargs), (logits, target), seed
    )
    ref, g_ref = loss_and_grads(
        lambda z, y: F.binary_cross_entropy_with_logits(z, y, **kwargs), (logits, target), seed
    )
    assert max_diff(ours, ref) <= TOL64, f"loss differs by {max_diff(ours, ref)}"
    for name, a, b in zip(("logits", "target"), g_ours, g_ref):
        assert max_diff(a, b) <= TOL64, f"gradient w.r.t. {name} differs by {max_diff(a, b)}"


@pytest.mark.parametrize("shape", BCE_SHAPES, ids=str)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("weight_kind", [None, "full", "last-dim"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_bce_on_probabilities_matches_torch(shape, seed, weight_kind, reduction):
    logits, target, weight, _ = make_bce_case(shape, seed, weight_kind, False)
    probs = torch.sigmoid(logits).detach().requires_grad_()
    kwargs = {"weight": weight, "reduction": reduction}
    ours, g_ours = loss_and_grads(lambda p, y: binary_cross_entropy(p, y, **kwargs), (probs, target), seed)
    ref, g_ref = loss_and_grads(lambda p, y: F.binary_cross_entropy(p, y, **kwargs), (probs, target), seed)
    assert max_diff(ours, ref) <= TOL64, f"loss differs by {max_diff(ours, ref)}"
    for name, a, b in zip(("probs", "target"), g_ours, g_ref):
        # dloss/dp = (p - y) / (p (1 - p)) reaches ~1e2 here, so compare relative to its size.
        assert max_diff(a, b) <= TOL64 * max(1.0, b.abs().max().item()), (
            f"d/d{name} differs by {max_diff(a, b)}"
        )


def test_bce_gradcheck():
    logits, target, weight, pos_weight = make_bce_case((4, 3), 8, "last-dim", True)
    for reduction in ("none", "mean", "sum"):
        fn = partial(
            binary_cross_entropy_with_logits, weight=weight, pos_weight=pos_weight, reduction=reduction
        )
        assert torch.autograd.gradcheck(fn, (logits, target), eps=1e-6, atol=1e-8)
        probs = torch.sigmoid(logits).detach().requires_grad_()
        fn = partial(binary_cross_entropy, weight=weight, reduction=reduction)
        assert torch.autograd.gradcheck(fn, (probs, target), eps=1e-6, atol=1e-8)


def test_bce_with_logits_is_stable_at_extremes():
    # sigmoid(+-100) rounds to exactly 1 or 0 in float32: log(1 - sigmoid(z)) would be -inf; the
    # softplus form keeps the loss finite and exact.
    logits = torch.tensor([-100.0, -30.0, 0.0, 30.0, 100.0], requires_grad=True)
    target = torch.tensor([1.0, 1.0, 0.5, 0.0, 0.0])
    ours, (g_ours,) = loss_and_grads(
        lambda z: binary_cross_entropy_with_logits(z, target, reduction="none"), (logits,)
    )
    ref, (g_ref,) = loss_and_grads(
        lambda z: F.binary_cross_entropy_with_logits(z, target, reduction="none"), (logits,)
    )
    assert torch.isfinite(ours).all()
    assert max_diff(ours, ref) <= 1e-5 and max_diff(g_ours, g_ref) <= 1e-5  # fp32 values up to 100


def test_bce_on_probabilities_clamps_logs_like_torch():
    # p = 0 with y = 1: log 0 = -inf is clamped at -100, so the loss is 100, not inf.
    probs = torch.tensor([0.0, 1.0, 0.5], dtype=F64, requires_grad=True)
    target = torch.tensor([1.0, 0.0, 1.0], dtype=F64)
    ours, (g_ours,) = loss_and_grads(lambda p: binary_cross_entropy(p, target, reduction="none"), (probs,))
    ref, (g_ref,) = loss_and_grads(lambda p: F.binary_cross_entropy(p, target, reduction="none"), (probs,))
    assert max_diff(ours, ref) <= TOL64 and max_diff(g_ours, g_ref) <= TOL64 * g_ref.abs().max().item()


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: binary_cross_entropy_with_logits(torch.randn(3, 2), torch.rand(3)),
            r"target shape \(3,\).*logits shape \(3, 2\)",
        ),
        (
            lambda: binary_cross_entropy_with_logits(torch.randn(3, 2), torch.ones(3, 2, dtype=torch.long)),
            r"floating-point",
        ),
        (
            lambda: binary_cross_entropy_with_logits(torch.randn(3, 2), torch.rand(3, 2), torch.ones(3)),
            r"weight shape \(3,\) does not broadcast",
        ),
        (
            lambda: binary_cross_entropy_with_logits(
                torch.randn(3, 2), torch.rand(3, 2), pos_weight=torch.ones(2, 2)
            ),
            r"pos_weight shape \(2, 2\)",
        ),
        (
            lambda: binary_cross_entropy_with_logits(torch.randn(3, 2), torch.rand(3, 2), reduction="max"),
            r"reduction",
        ),
        (lambda: binary_cross_entropy(torch.tensor([0.5, 1.2]), torch.rand(2)), r"\[0, 1\], found 1\.2"),
        (lambda: binary_cross_entropy(torch.tensor([0.5, float("nan")]), torch.rand(2)), r"found nan"),
    ],
)
def test_bce_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
