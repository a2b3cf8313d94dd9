"""minift/nn/positions.py against transformers (DistilBERT's sinusoidal table, Llama's rotary
embedding) and against the properties the papers state."""

import math

import pytest
import torch
from transformers.models.distilbert.modeling_distilbert import create_sinusoidal_embeddings
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from minift.nn.positions import apply_rotary, rotary_angles, sinusoidal_positions


@pytest.mark.parametrize("positions,dim", [(16, 8), (512, 384), (7, 2)])
def test_sinusoidal_table_is_distilberts(positions, dim):
    reference = torch.empty(positions, dim)
    create_sinusoidal_embeddings(positions, dim, reference)
    assert (sinusoidal_positions(positions, dim) - reference).abs().max() <= 1e-6


def test_sinusoidal_formula_and_relative_shift():
    table = sinusoidal_positions(50, 16).double()
    pos, i = 13, 3
    assert table[pos, 2 * i] == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert table[pos, 2 * i + 1] == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    # PE[pos + k] = R_k PE[pos] with one 2x2 rotation per pair, the same R_k for every pos (sec. 3.5)
    k = 5
    theta = 10000 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16) * k
    rotation = torch.zeros(16, 16, dtype=torch.float64)
    for j, t in enumerate(theta):
        rotation[2 * j:2 * j + 2, 2 * j:2 * j + 2] = torch.tensor([[math.cos(t), math.sin(t)],
                                                                   [-math.sin(t), math.cos(t)]])
    assert (table[:-k] @ rotation.T - table[k:]).abs().max() <= 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rotary_is_llamas(seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 3, 10, 16, generator=g), torch.randn(2, 3, 10, 16, generator=g)
    positions = torch.randint(0, 100, (2, 10), generator=g)
    cos, sin = rotary_angles(positions, 16)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos, sin)
    assert (apply_rotary(q, cos, sin) - ref_q).abs().max() <= 1e-5
    assert (apply_rotary(k, cos, sin) - ref_k).abs().max() <= 1e-5


def test_rotary_scores_depend_on_relative_position_only():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 1, 1, 32, generator=g), torch.randn(1, 1, 1, 32, generator=g)

    def score(m, n):
        cq, sq = rotary_angles(torch.tensor([m]), 32)
        ck, sk = rotary_angles(torch.tensor([n]), 32)
        return float((apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum())

    assert score(7, 3) == pytest.approx(score(104, 100), abs=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)
    assert score(0, 0) == pytest.approx(float((q * k).sum()), abs=1e-5)  # position 0 is no rotation


def test_odd_dimension_is_an_error():
    with pytest.raises(ValueError, match="even dimension"):
        sinusoidal_positions(4, 7)
