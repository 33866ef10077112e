"""Multi-head attention: h scaled dot-product attentions side by side, each in its own
learned subspace, concatenated and mixed by W_o. Self-attention is the case queries = keys =
values; with a causal mask it is the attention of GPT-2.

Shapes: queries (B, Q, H), keys and values (B, K, H) with H = num_hiddens; heads (B, h, *, H/h);
attention_weights (B, h, Q, K).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gptlab.attention.scoring import masked_softmax


class MultiHeadAttention(nn.Module):
    def __init__(self, num_hiddens: int, num_heads: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        if num_hiddens % num_heads:
            raise ValueError(f"num_hiddens={num_hiddens} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.W_q = nn.Linear(num_hiddens, num_hiddens, bias=bias)
        self.W_k = nn.Linear(num_hiddens, num_hiddens, bias=bias)
        self.W_v = nn.Linear(num_hiddens, num_hiddens, bias=bias)
        self.W_o = nn.Linear(num_hiddens, num_hiddens, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.attention_weights: torch.Tensor | None = None

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, h, T, H/h): every head gets its own slice of the channels."""
        B, T, H = x.shape
        return x.view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2)

    def forward(self, queries, keys, values, valid_lens=None, causal: bool = False):
        """valid_lens: None, (B,) or (B, Q), as in masked_softmax. causal: query i sees keys
        j <= i only (self-attention in a decoder)."""
        q = self.split_heads(self.W_q(queries))
        k = self.split_heads(self.W_k(keys))
        v = self.split_heads(self.W_v(values))
        B, h, Q, d = q.shape
        K = k.size(2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d)  # (B, h, Q, K), all heads
        if causal:
            future = torch.ones(Q, K, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        lens = None
        if valid_lens is not None:  # the same key lengths for every head
            lens = valid_lens if valid_lens.dim() == 2 else valid_lens[:, None].expand(B, Q)
            lens = lens.repeat_interleave(h, dim=0)  # (B*h, Q)
        weights = masked_softmax(scores.reshape(B * h, Q, K), lens).view(B, h, Q, K)
        self.attention_weights = weights
        out = torch.matmul(self.dropout(weights), v)  # (B, h, Q, d)
        out = out.transpose(1, 2).reshape(B, Q, h * d)  # heads side by side again
        return self.W_o(out)
