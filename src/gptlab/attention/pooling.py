"""Attention pooling: queries select and aggregate values through their keys.

The two-component framework of attention cues: a *query* (a voluntary cue: what we look for)
is compared with *keys* (involuntary cues: what each item offers); the comparison gives one
weight per key, and the output is the weighted average of the *values* (the sensory inputs that
belong to the keys). Everything in `gptlab.attention` is a choice of how to compare.

Nadaraya-Watson kernel regression is the oldest example: to predict y at a query x, average the
training targets y_i, weighting each by how close its x_i is to the query:
    f(x) = sum_i softmax_i(-((x - x_i) * w)^2 / 2) * y_i
w = 1 is the parameter-free Gaussian kernel; a learnable w sets how sharp the weights are.

Shapes: queries (Q,), keys (K,), values (K,) or (K, D); weights (Q, K).
"""

from __future__ import annotations

import torch
from torch import nn


def attention_pool(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Weighted average of values: weights (..., Q, K) with rows summing to 1, values (K,) or
    (..., K, D) -> (..., Q) or (..., Q, D)."""
    if values.dim() == 1:
        return weights @ values
    return torch.matmul(weights, values)


def average_weights(n_queries: int, n_keys: int) -> torch.Tensor:
    """Average pooling: every key gets the same weight, whatever the query. (Q, K)."""
    return torch.full((n_queries, n_keys), 1.0 / n_keys)


def gaussian_weights(queries: torch.Tensor, keys: torch.Tensor, w: torch.Tensor | float = 1.0):
    """softmax over keys of -((query - key) * w)^2 / 2: close keys weigh more. (Q, K)."""
    diff = (queries[:, None] - keys[None, :]) * w
    return torch.softmax(-(diff**2) / 2, dim=1)


class NadarayaWatson(nn.Module):
    """Kernel regression as attention pooling, with a learnable bandwidth w (w = 1 and
    `learnable=False` give the parameter-free version). Keeps `.attention_weights` (Q, K)."""

    def __init__(self, w: float = 1.0, learnable: bool = True) -> None:
        super().__init__()
        tensor = torch.tensor(float(w))
        self.w = nn.Parameter(tensor) if learnable else tensor
        self.attention_weights: torch.Tensor | None = None

    def forward(self, queries, keys, values) -> torch.Tensor:
        weights = gaussian_weights(queries, keys, self.w)
        self.attention_weights = weights.detach()
        return attention_pool(weights, values)


def true_function(x: torch.Tensor) -> torch.Tensor:
    return 2 * torch.sin(x) + x**0.8


def synthetic_task(n_train: int = 50, noise: float = 0.5, seed: int = 0):
    """The classic task y = 2 sin(x) + x^0.8 + noise, 50 sorted training points on [0, 5),
    50 held-out queries on a grid with the noiseless truth: (x_train, y_train, x_test, y_test)."""
    g = torch.Generator().manual_seed(seed)
    x_train = torch.sort(torch.rand(n_train, generator=g) * 5).values
    y_train = true_function(x_train) + noise * torch.randn(n_train, generator=g)
    x_test = torch.arange(0, 5, 0.1)
    return x_train, y_train, x_test, true_function(x_test)


def train_nadaraya_watson(
    x_train: torch.Tensor, y_train: torch.Tensor, epochs: int = 10, lr: float = 0.5
) -> tuple[NadarayaWatson, list[float]]:
    """Fit w by SGD on the training points, each predicted from all the *other* points (a
    point that could see itself would simply learn to copy its own noisy y). Returns the model
    and the training loss (MSE) before training and after each epoch."""
    model = NadarayaWatson(w=1.0, learnable=True)
    n = len(x_train)
    others = ~torch.eye(n, dtype=torch.bool)
    keys = x_train.expand(n, n)[others].view(n, n - 1)
    values = y_train.expand(n, n)[others].view(n, n - 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def loss_now() -> torch.Tensor:
        diff = (x_train[:, None] - keys) * model.w
        pred = (torch.softmax(-(diff**2) / 2, dim=1) * values).sum(1)
        return ((pred - y_train) ** 2).mean() / 2

    losses = [loss_now().item()]
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = loss_now()
        loss.backward()
        optimizer.step()
        losses.append(loss_now().item())
    return model, losses


def entropy(weights: torch.Tensor) -> float:
    """Mean entropy of the rows of a weight matrix, in nats: lower = sharper attention."""
    w = weights.clamp_min(1e-12)
    return float(-(w * w.log()).sum(-1).mean())
