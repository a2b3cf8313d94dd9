"""minift/nn/attention.py against the formula in float64 and against F.scaled_dot_product_attention.

Checks the eager and sdpa paths on several shapes (including Tq != Tk), padding and causal masks,
gradients, dropout, the no-NaN guarantee of the finite mask, and the error messages.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from minift.nn.attention import attention, causal_mask, merge_heads, padding_mask, split_heads

SHAPES = [(2, 3, 5, 5, 4), (1, 1, 7, 7, 16), (3, 2, 4, 9, 8), (2, 4, 1, 6, 12)]  # B, H, Tq, Tk, D


def qkv(b, h, tq, tk, d, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=gen, dtype=dtype)
    k = torch.randn(b, h, tk, d, generator=gen, dtype=dtype)
    v = torch.randn(b, h, tk, d, generator=gen, dtype=dtype)
    return q, k, v


def reference(q, k, v, keep=None, causal=False):
    """Eq. 1 in float64 with boolean masking (masked scores set to -inf before the softmax)."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = torch.ones(scores.shape, dtype=torch.bool)
    if keep is not None:
        allowed &= keep.bool()[:, None, None, :]
    if causal:
        tq, tk = scores.shape[-2:]
        allowed &= torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq)
    return torch.softmax(scores.masked_fill(~allowed, -math.inf), -1) @ v


def random_keep(b, tk, seed):
    """An attention_mask with a different number of real tokens per row (at least one)."""
    lengths = torch.randint(1, tk + 1, (b,), generator=torch.Generator().manual_seed(seed))
    return (torch.arange(tk)[None, :] < lengths[:, None]).long()


def max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_formula_with_padding(impl, shape, seed):
    q, k, v = qkv(*shape, seed)
    keep = random_keep(shape[0], shape[3], seed)
    out = attention(q, k, v, padding_mask(keep, q.dtype), impl=impl)
    assert out.shape == q.shape
    assert max_diff(out, reference(q, k, v, keep)) <= 1e-5  # fp32 activations


@pytest.mark.parametrize("shape", SHAPES)
def test_float64_matches_formula_to_1e10(shape):
    q, k, v = qkv(*shape, seed=5, dtype=torch.float64)
    keep = random_keep(shape[0], shape[3], 5)
    for impl in ("eager", "sdpa"):
        assert (
            max_diff(attention(q, k, v, padding_mask(keep, q.dtype), impl=impl), reference(q, k, v, keep))
            <= 1e-10
        )


@pytest.mark.parametrize("shape", SHAPES)
def test_eager_and_sdpa_gradients_agree_with_reference(shape):
    q, k, v = qkv(*shape, seed=3)
    keep = random_keep(shape[0], shape[3], 3)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(9))

    def grads(fn, dtype):
        inputs = [t.detach().to(dtype).clone().requires_grad_() for t in (q, k, v)]
        fn(*inputs).backward(grad_out.to(dtype))
        return [t.grad for t in inputs]

    ref = grads(lambda q, k, v: reference(q, k, v, keep), torch.float64)
    for impl in ("eager", "sdpa"):
        ours = grads(
            lambda q, k, v, impl=impl: attention(q, k, v, padding_mask(keep, q.dtype), impl=impl),
            torch.float32,
        )
        for a, b in zip(ours, ref):
            assert max_diff(a, b) <= 1e-5  # fp32 gradients of O(1)


def test_eager_gradcheck_float64():
    q, k, v = (t.requires_grad_() for t in qkv(2, 2, 3, 4, 5, seed=0, dtype=torch.float64))
    mask = padding_mask(torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]), torch.float64)
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, mask), (q, k, v))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("tq,tk", [(6, 6), (1, 6), (3, 7)])
def test_causal_is_bottom_right_aligned(impl, tq, tk):
    # With a KV cache the queries are the last tq of tk positions: the result must equal full
    # causal attention over tk positions, restricted to its last tq rows.
    q_full, k, v = qkv(2, 3, tk, tk, 8, seed=tq)
    q = q_full[:, :, tk - tq :]
    expected = reference(q_full, k, v, causal=True)[:, :, tk - tq :]
    assert max_diff(attention(q, k, v, is_causal=True, impl=impl), expected) <= 1e-5  # fp32
    if tq == tk:
        assert (
            max_diff(
                attention(q, k, v, is_causal=True, impl=impl),
                F.scaled_dot_product_attention(q, k, v, is_causal=True),
            )
            <= 1e-5
        )


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_causal_plus_padding(impl):
    q, k, v = qkv(3, 2, 5, 5, 4, seed=7)
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])  # left padding in row 3
    out = attention(q, k, v, padding_mask(keep, q.dtype), is_causal=True, impl=impl)
    # Row 3's first two queries see only padding: finite (uniform over the causal keys), not NaN.
    assert torch.isfinite(out).all()
    valid = reference(q, k, v, keep, causal=True)
    assert max_diff(out[:2], valid[:2]) <= 1e-5 and max_diff(out[2, :, 2:], valid[2, :, 2:]) <= 1e-5


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_fully_padded_row_gives_no_nan(impl):
    q, k, v = (t.requires_grad_() for t in qkv(2, 2, 4, 4, 8, seed=1))
    keep = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    out = attention(q, k, v, padding_mask(keep, q.dtype), impl=impl)
    out.sum().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(t.grad).all() for t in (q, k, v))
    # Every score of the empty row is shifted by the same finfo.min: the softmax is uniform.
    assert max_diff(out[1], v[1].mean(dim=1, keepdim=True).expand(2, 4, 8)) <= 1e-6
    # The -inf alternative would poison everything with NaN, which is why the mask is finite.
    minus_inf = torch.zeros(2, 1, 1, 4).masked_fill(~keep.bool()[:, None, None, :], -math.inf)
    assert attention(q.detach(), k.detach(), v.detach(), minus_inf, impl="eager")[1].isnan().all()


def test_padding_mask_values_and_dtype():
    keep = torch.tensor([[1, 1, 0], [1, 0, 0]])
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        mask = padding_mask(keep, dtype)
        assert mask.shape == (2, 1, 1, 3) and mask.dtype == dtype
        low = torch.finfo(dtype).min
        assert torch.equal(mask[:, 0, 0], torch.tensor([[0.0, 0.0, low], [0.0, low, low]], dtype=dtype))
    with pytest.raises(ValueError, match=r"shape \(batch, seq_len\), got \(3,\)"):
        padding_mask(torch.ones(3), torch.float32)


def test_causal_mask_shape_and_alignment():
    mask = causal_mask(2, 4, torch.float32)
    visible = mask == 0
    assert torch.equal(visible, torch.tensor([[True, True, True, False], [True, True, True, True]]))
    with pytest.raises(ValueError, match="5 queries cannot be the last positions of 3 keys"):
        causal_mask(5, 3, torch.float32)


def test_autocast_bfloat16_keeps_fully_padded_rows_finite():
    # float32's minimum rounds to -inf in bfloat16; the mask is clamped into bfloat16's range first.
    q, k, v = qkv(2, 2, 4, 4, 8, seed=2)
    mask = padding_mask(torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]]), torch.float32)
    for impl in ("eager", "sdpa"):
        out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, impl=impl)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        # bfloat16 keeps 8 bits: 2^-8 relative on values of O(1), plus the rounding of q, k, v.
        assert max_diff(out[0], reference(q, k, v, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))[0]) <= 0.05


def test_split_and_merge_heads():
    x = torch.randn(2, 5, 12)
    heads = split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    assert torch.equal(heads[:, 1], x[:, :, 4:8])  # head h holds features h*D .. (h+1)*D - 1
    assert torch.equal(merge_heads(heads), x)
    with pytest.raises(ValueError, match=r"12 features of x \(2, 5, 12\) do not split into 5 heads"):
        split_heads(x, 5)


def test_dropout_only_in_training_and_same_mask_in_both_paths():
    q, k, v = qkv(2, 2, 6, 6, 4, seed=4)
    mask = padding_mask(random_keep(2, 6, 4), q.dtype)
    plain = attention(q, k, v, mask)
    assert torch.equal(attention(q, k, v, mask, dropout_p=0.5, training=False), plain)
    torch.manual_seed(0)
    dropped = attention(q, k, v, mask, dropout_p=0.5, training=True)
    assert max_diff(dropped, plain) > 1e-2
    # On the CPU both implementations draw the dropout mask the same way (see attention.py).
    torch.manual_seed(0)
    assert max_diff(attention(q, k, v, mask, dropout_p=0.5, training=True, impl="sdpa"), dropped) <= 1e-6


def test_input_errors_name_the_shapes():
    q, k, v = qkv(2, 3, 4, 4, 8, seed=0)
    with pytest.raises(ValueError, match=r"q must have shape \(B, H, T, D\), got \(3, 4, 8\)"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match=r"q \(2, 3, 4, 8\), k \(2, 3, 4, 8\), v \(2, 3, 4, 7\)"):
        attention(q, k, v[..., :7])
    with pytest.raises(
        ValueError, match=r"mask \(2, 1, 1, 5\) does not broadcast to the scores .* \(2, 3, 4, 4\)"
    ):
        attention(q, k, v, torch.zeros(2, 1, 1, 5))
    with pytest.raises(ValueError, match="mask must be additive .* got torch.bool"):
        attention(q, k, v, torch.ones(2, 1, 1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="impl must be one of"):
        attention(q, k, v, impl="flash")
