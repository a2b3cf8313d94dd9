"""Scaled dot-product attention, shared by BERT and GPT-2, with its masks and head reshapes.

Lesson: `lessons/04-attention.md` (the math, the mask, multi-head reshapes, eager vs sdpa).

Vaswani et al. 2017, "Attention Is All You Need", eq. 1:
    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V
and sec. 3.2.2 (multi-head): H heads of size D = C / H run side by side on slices of the projected
Q, K, V; their outputs are concatenated back to C features.

Two implementations of the same math, chosen by `impl`:
- "eager": the formula spelled out with our own `softmax` (minift/nn/functional.py), and dropout
  applied explicitly to the attention probabilities;
- "sdpa": `torch.nn.functional.scaled_dot_product_attention`, PyTorch's fused kernel (except in
  CPU training with dropout, where PyTorch has no fused kernel; see `attention`).
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from minift.nn.functional import dropout, softmax

IMPLS = ("eager", "sdpa")


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, H, T, D) with D = C / H: a view, no copy (sec. 3.2.2)."""
    batch, length, channels = x.shape
    if channels % num_heads != 0:
        raise ValueError(
            f"split_heads: {channels} features of x {tuple(x.shape)} do not split into {num_heads} heads"
        )
    return x.view(batch, length, num_heads, channels // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H * D): the concatenation of the heads (sec. 3.2.2)."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


def padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """attention_mask (B, T) of 1 (a token) / 0 (padding) -> additive mask (B, 1, 1, T) of `dtype`.

    0 where a key may be attended, the most negative *finite* number of `dtype` where it is padding;
    added to the scores it broadcasts over heads and query positions. Why finite and not -inf: a row
    whose keys are all padding (an all-zero attention_mask row) would be softmax(-inf, ..., -inf) =
    0/0 = NaN, and NaN spreads through every later layer and into the gradients of every weight,
    even though the loss never looks at that row. With the finite minimum every score of such a row
    becomes the same number, the softmax is uniform, and everything stays finite.
    """
    if attention_mask.dim() != 2:
        raise ValueError(
            f"attention_mask must have shape (batch, seq_len), got {tuple(attention_mask.shape)}"
        )
    keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T); any non-zero value means "a token"
    mask = torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill_(~keep, torch.finfo(dtype).min)


def packed_sequence_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """position_ids (B, T) -> (B, T): which of the examples packed into a row each token belongs to,
    counted from 0; None when every row holds one sequence (positions go up by 1 all along).

    A new example starts wherever the position does not follow the previous one (it restarts, at 0
    for `minift.data.sft.pack_examples`): the rule of transformers' masking_utils
    `find_packed_sequence_indices`, so the same position_ids mean the same packing in both.
    """
    previous = position_ids[:, :1] - 1  # the first token continues an imaginary one before it
    starts = torch.diff(position_ids, prepend=previous, dim=-1) != 1  # (B, T)
    ids = starts.cumsum(-1)  # (B, T)
    return None if not bool(ids[:, -1].any()) else ids


def same_sequence_mask(sequence_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """sequence_ids (B, T) -> additive (B, 1, T, T): 0 where query and key belong to the same packed
    example, the finite minimum elsewhere. With the causal mask on top, each example attends only to
    its own earlier tokens: a block-diagonal causal mask, so a packed example is computed as if alone."""
    same = sequence_ids[:, None, :, None] == sequence_ids[:, None, None, :]  # (B, 1, T, T)
    mask = torch.zeros(same.shape, dtype=dtype, device=sequence_ids.device)
    return mask.masked_fill_(~same, torch.finfo(dtype).min)


def causal_mask(
    q_len: int, k_len: int, dtype: torch.dtype, device: torch.device | None = None
) -> torch.Tensor:
    """Additive (q_len, k_len) mask letting query i see keys 0 .. k_len - q_len + i: a decoder must
    not see the future (Vaswani et al. sec. 3.2.3, "masking out ... illegal connections").

    The queries are the *last* q_len positions of the k_len keys: with a KV cache, one new token
    (q_len = 1) sees every cached key; without one, q_len = k_len and this is the lower triangle.
    """
    if q_len > k_len:
        raise ValueError(f"causal_mask: {q_len} queries cannot be the last positions of {k_len} keys")
    future = torch.ones(q_len, k_len, dtype=torch.bool, device=device).triu_(k_len - q_len + 1)
    mask = torch.zeros(q_len, k_len, dtype=dtype, device=device)
    return mask.masked_fill_(future, torch.finfo(dtype).min)


def _finite_in(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask in `dtype` (scores are bfloat16 under autocast): float32's minimum would
    round to -inf there, so it is first clamped to the target dtype's own finite minimum."""
    if mask.dtype == dtype:
        return mask
    return mask.clamp(min=torch.finfo(dtype).min).to(dtype)


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, impl: str
) -> None:
    if impl not in IMPLS:
        raise ValueError(f"attention: impl must be one of {IMPLS}, got {impl!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must have shape (B, H, T, D), got {tuple(t.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit: "
            "k and v must be equal, and share B, H and D with q"
        )
    if mask is not None:
        if not mask.is_floating_point():
            raise ValueError(
                f"attention: mask must be additive (floating point, 0 = attend), got {mask.dtype}; "
                "build it from a 0/1 attention_mask with padding_mask"
            )
        scores_shape = (*q.shape[:3], k.shape[2])
        try:
            fits = torch.broadcast_shapes(mask.shape, scores_shape) == scores_shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"attention: mask {tuple(mask.shape)} does not broadcast to the scores "
                f"(B, H, Tq, Tk) = {scores_shape}"
            )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
    is_causal: bool = False,
    impl: str = "eager",
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v  for q (B, H, Tq, D), k and v (B, H, Tk, D) -> (B, H, Tq, D).

    mask: additive, broadcastable to (B, H, Tq, Tk) (e.g. `padding_mask`'s (B, 1, 1, Tk)).
    is_causal: also hide future keys (`causal_mask`). dropout_p: dropout on the attention
    probabilities, applied only when `training` (0.1 in BERT and GPT-2).
    impl: "eager" (the formula, with our softmax) or "sdpa" (fused kernels, the same numbers).
    """
    _check_inputs(q, k, v, mask, impl)
    dropout_p = dropout_p if training else 0.0
    q_len, k_len = q.shape[2], k.shape[2]
    # PyTorch's CPU attention kernels have no dropout: with dropout it runs its own unfused
    # composition, slower than ours below (which keeps a 1-byte dropout mask), so we run ours.
    fused = impl == "sdpa" and not (dropout_p > 0.0 and q.device.type == "cpu")
    if fused and is_causal and mask is None and q_len == k_len:
        # The kernel builds the triangle itself (and skips the blocks above the diagonal).
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if mask is not None:
        mask = _finite_in(mask, q.dtype)
    if is_causal and q_len > 1:  # one query is the newest position (a KV-cache step): it sees every key
        causal = causal_mask(q_len, k_len, q.dtype, q.device)
        # minimum, not +: two finite minimums added would overflow to -inf (and give NaN rows).
        mask = causal if mask is None else torch.minimum(mask, causal)
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return _explicit_attention(q, k, v, mask, dropout_p, softmax if impl == "eager" else torch.softmax)


def _explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout_p: float,
    softmax_fn: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """Eq. 1 step by step; `softmax_fn` is our softmax (eager) or PyTorch's fused one."""
    # Dividing by sqrt(D) keeps the dot products' variance ~1, so the softmax does not saturate
    # into vanishing gradients (sec. 3.2.1, footnote 4).
    # Scaling q rather than the scores: (B, H, Tq, D) is smaller than (B, H, Tq, Tk) when Tk > D.
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # (B, H, Tq, Tk)
    if mask is not None:
        # In place (the product's backward does not need its output): no second score buffer.
        scores.add_(_finite_in(mask, scores.dtype))  # broadcast over heads and queries
    probs = softmax_fn(scores, dim=-1)  # (B, H, Tq, Tk), each row sums to 1 over the keys
    probs = dropout(probs, dropout_p, training=dropout_p > 0.0)  # drops a key for one query
    return probs @ v  # (B, H, Tq, D)


# ----------------------------------------------------------------------------------------------------
# Cross-attention (Vaswani et al. sec. 3.2.3, the second use of attention: "encoder-decoder attention")
# ----------------------------------------------------------------------------------------------------


def cross_attention_kv(
    encoder_hidden_states: torch.Tensor,
    project: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    num_heads: int,
    cached: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values a decoder layer's cross-attention reads, each (B, H, S, D).

    "the queries come from the previous decoder layer, and the memory keys and values come from the
    output of the encoder" (sec. 3.2.3): `project(encoder_hidden_states (B, S, C))` gives k and v
    (B, S, C) with the layer's own weights. The encoder's output does not change while the decoder
    generates, so neither do they: computed once, on the first step, then `cached` is returned as is
    (the encoder half of the decoding cache, reordered with the beams like the decoder half).
    """
    if cached is not None:
        return cached
    k, v = project(encoder_hidden_states)
    return split_heads(k, num_heads), split_heads(v, num_heads)


def cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    encoder_mask: torch.Tensor | None,
    dropout_p: float = 0.0,
    training: bool = False,
    impl: str = "eager",
) -> torch.Tensor:
    """Queries of the decoder's T positions (B, H, T, D) over the encoder's S positions (B, H, S, D).

    encoder_mask: `padding_mask` of the *encoder's* attention_mask, (B, 1, 1, S): no query may read
    the source's padding. Never causal: every target position may read the whole source, which the
    encoder has already seen in full; the decoder's own future is hidden by its self-attention.
    """
    return attention(q, k, v, encoder_mask, dropout_p=dropout_p, training=training, is_causal=False, impl=impl)
