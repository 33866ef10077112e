import math

import torch

from gptlab.attention import PositionalEncoding, shift_matrix, sinusoidal_table


def test_interleaved_formula():
    P = sinusoidal_table(50, 8)
    pos, i = 7, 1
    assert math.isclose(P[pos, 2 * i], math.sin(pos / 10000 ** (2 * i / 8)), rel_tol=1e-6)
    assert math.isclose(P[pos, 2 * i + 1], math.cos(pos / 10000 ** (2 * i / 8)), rel_tol=1e-6)


def test_a_fixed_linear_map_shifts_every_position():
    d, n = 16, 100
    P = sinusoidal_table(n + 20, d).double()
    for offset in (1, 5, 17):
        M = shift_matrix(d, offset)
        shifted = P[:n] @ M.T  # the same M for every position i
        torch.testing.assert_close(
            shifted.float(), P[offset : n + offset].float(), atol=1e-5, rtol=0
        )
        assert torch.allclose(M @ M.T, torch.eye(d, dtype=M.dtype))  # a rotation


def test_forward_adds_the_table():
    pe = PositionalEncoding(8, max_len=20).eval()
    X = torch.zeros(2, 5, 8)
    torch.testing.assert_close(pe(X), sinusoidal_table(20, 8)[:5].expand(2, 5, 8))
