"""Scoring functions: how a query is compared with each key, and the masked softmax that turns
scores into weights.

Shapes: queries (B, Q, q_size), keys (B, K, k_size), values (B, K, v_size), scores and
weights (B, Q, K), outputs (B, Q, v_size). valid_lens: None, (B,) keys valid per batch row, or
(B, Q) per query.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def masked_softmax(scores: torch.Tensor, valid_lens: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last axis where only the first valid_lens keys count. Masked keys get
    weight exactly 0. A row with no valid key (valid_len 0) gets all-zero weights, so its
    attention output is the zero vector, and no NaN appears in values or gradients."""
    if valid_lens is None:
        return torch.softmax(scores, dim=-1)
    B, Q, K = scores.shape
    lens = valid_lens.to(scores.device)
    if lens.dim() == 1:
        lens = lens[:, None].expand(B, Q)
    mask = torch.arange(K, device=scores.device)[None, None, :] < lens[:, :, None]  # (B, Q, K)
    has_key = mask.any(dim=-1, keepdim=True)
    filled = scores.masked_fill(~mask, float("-inf")).masked_fill(~has_key, 0.0)
    return torch.softmax(filled, dim=-1) * mask


class AdditiveAttention(nn.Module):
    """score(q, k) = w_v . tanh(W_q q + W_k k): a one-hidden-layer network, so queries and keys
    may have different sizes. Keeps `.attention_weights` (B, Q, K)."""

    def __init__(self, key_size: int, query_size: int, num_hiddens: int, dropout: float = 0.0):
        super().__init__()
        self.W_k = nn.Linear(key_size, num_hiddens, bias=False)
        self.W_q = nn.Linear(query_size, num_hiddens, bias=False)
        self.w_v = nn.Linear(num_hiddens, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.attention_weights: torch.Tensor | None = None

    def forward(self, queries, keys, values, valid_lens=None) -> torch.Tensor:
        q, k = self.W_q(queries), self.W_k(keys)  # (B, Q, h), (B, K, h)
        features = torch.tanh(q[:, :, None, :] + k[:, None, :, :])  # (B, Q, K, h)
        scores = self.w_v(features).squeeze(-1)  # (B, Q, K)
        weights = masked_softmax(scores, valid_lens)
        self.attention_weights = weights
        return torch.bmm(self.dropout(weights), values)


class DotProductAttention(nn.Module):
    """score(q, k) = q . k / sqrt(d): no parameters; queries and keys share the size d, and the
    scaling keeps the scores' variance near 1 whatever d is. Keeps `.attention_weights`."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.attention_weights: torch.Tensor | None = None

    def forward(self, queries, keys, values, valid_lens=None) -> torch.Tensor:
        d = queries.size(-1)
        scores = torch.matmul(queries, keys.transpose(-2, -1)) / math.sqrt(d)
        weights = masked_softmax(scores, valid_lens)
        self.attention_weights = weights
        return torch.matmul(self.dropout(weights), values)
