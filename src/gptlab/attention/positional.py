"""Sinusoidal positional encoding ("Attention Is All You Need"), interleaved:
    PE[pos, 2i] = sin(pos / 10000^(2i/d)),   PE[pos, 2i+1] = cos(pos / 10000^(2i/d))

Each pair of dimensions is a clock hand turning at its own frequency, fast in the first
dimensions, slow in the last. Moving by an offset delta turns every hand by a fixed angle, so a
fixed linear map (one 2 x 2 rotation per pair, `shift_matrix`) takes the encoding of any
position i to that of i + delta: relative positions are easy for a linear layer to read.
GPT-2 instead learns its position table (wpe); this is the idea it replaced.
"""

from __future__ import annotations

import torch
from torch import nn


def sinusoidal_table(max_len: int, num_hiddens: int) -> torch.Tensor:
    """(max_len, num_hiddens) table; num_hiddens must be even."""
    if num_hiddens % 2:
        raise ValueError(f"num_hiddens must be even, got {num_hiddens}")
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    freq = 10000.0 ** (-torch.arange(0, num_hiddens, 2, dtype=torch.float64) / num_hiddens)
    table = torch.zeros(max_len, num_hiddens, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table.float()


def shift_matrix(num_hiddens: int, offset: int) -> torch.Tensor:
    """M (num_hiddens, num_hiddens) with PE[i + offset] = M @ PE[i] for every i: for each
    frequency w, (sin, cos) at p -> (sin, cos) at p + offset is the rotation
    [[cos(w offset), sin(w offset)], [-sin(w offset), cos(w offset)]]."""
    freq = 10000.0 ** (-torch.arange(0, num_hiddens, 2, dtype=torch.float64) / num_hiddens)
    angle = freq * offset
    M = torch.zeros(num_hiddens, num_hiddens, dtype=torch.float64)
    c, s = torch.cos(angle), torch.sin(angle)
    idx = torch.arange(0, num_hiddens, 2)
    M[idx, idx], M[idx, idx + 1] = c, s
    M[idx + 1, idx], M[idx + 1, idx + 1] = -s, c
    return M


class PositionalEncoding(nn.Module):
    """forward(X (B, T, num_hiddens)) = dropout(X + PE[:T])."""

    def __init__(self, num_hiddens: int, max_len: int = 1000, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("P", sinusoidal_table(max_len, num_hiddens)[None], persistent=False)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.size(1) > self.P.size(1):
            raise ValueError(f"sequence of {X.size(1)} is longer than max_len {self.P.size(1)}")
        return self.dropout(X + self.P[:, : X.size(1)].to(X.dtype))
