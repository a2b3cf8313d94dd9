"""Position information for attention, which by itself ignores order: the sinusoidal table of the
original Transformer and rotary embeddings (RoPE). BERT and GPT-2 learn theirs instead (an
nn.Embedding with one row per position, in minift/models/).

Lesson: `lessons/02-embeddings-and-positions.md` (lookup as a one-hot product, the three kinds of
positions, why BERT and GPT-2 learn theirs).

Sinusoidal (Vaswani et al. 2017, sec. 3.5):
    PE[pos, 2i]   = sin(pos / 10000^(2i / d))
    PE[pos, 2i+1] = cos(pos / 10000^(2i / d))
added to the token embeddings. Each pair (2i, 2i+1) turns at its own frequency, so PE[pos + k] is a
fixed rotation of PE[pos] for every pos: "the model [can] easily learn to attend by relative positions".

Rotary (Su et al. 2021, "RoFormer", sec. 3.2, eq. 34): instead of adding a vector, rotate each pair
of dimensions of every query and key by the angle pos * theta_i, theta_i = 10000^(-2i / d). Then
q_m . k_n depends on m and n only through m - n. minift pairs dimension i with i + d/2 (the "rotate
half" layout of GPT-NeoX and Llama in transformers) rather than 2i with 2i + 1 (the paper's): the
same rotation of differently ordered coordinates, so checkpoints of those models can be read as is.
"""

from __future__ import annotations

import torch


def _inverse_frequencies(dim: int, base: float) -> torch.Tensor:
    """theta_i = base^(-2i / dim) for i = 0 .. dim/2 - 1, in float64 so the table is exact to float32."""
    if dim < 2 or dim % 2:
        raise ValueError(f"positions need an even dimension >= 2 (pairs of coordinates), got {dim}")
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim / 2,)


def sinusoidal_positions(num_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The (num_positions, dim) table of sec. 3.5: sines in the even columns, cosines in the odd ones."""
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * _inverse_frequencies(dim, base)  # (P, d/2)
    table = torch.empty(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table.float()


def rotary_angles(positions: torch.Tensor, dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of pos * theta_i for integer positions (..., T), each (..., T, dim), the d/2 angles
    repeated for both halves (dimension i and i + d/2 turn together)."""
    angles = positions.to(torch.float64)[..., None] * _inverse_frequencies(dim, base)  # (..., T, d/2)
    angles = torch.cat([angles, angles], dim=-1)  # (..., T, d)
    return angles.cos().float(), angles.sin().float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension: a quarter turn of every pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every pair (x_i, x_{i + d/2}) of x (B, H, T, d) by its angle: x cos + rotate_half(x) sin.
    cos and sin are (T, d) or (B, T, d) (`rotary_angles`); a head dimension is added for them."""
    if cos.dim() == 3:  # (B, T, d): one set of positions per row, shared by the heads
        cos, sin = cos[:, None], sin[:, None]
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)
