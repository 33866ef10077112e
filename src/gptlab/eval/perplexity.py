"""Perplexity with sliding windows: exp of the mean negative log-likelihood per token.

A text longer than the model's block_size L is read in windows of L tokens whose starts move by
`stride`. Token t (t >= 1) is predicted from the tokens before it, and it is scored exactly once,
by the first window that predicts it, with the context that window gives: with stride = L the
windows do not overlap (cheap, less context for early tokens of each window); with stride < L
every scored token has at least L - stride tokens of context (closer to the model's real
ability, L / stride times the work). The first token of the text has no context and is not
scored. This is the procedure of transformers' perplexity guide, with each window's inputs
ids[b : b + L] predicting ids[b + 1 : b + L + 1], so that no token is lost at window borders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptlab.errors import GptlabError
from gptlab.model import GPT


@dataclass
class Window:
    begin: int  # inputs are ids[begin:end], predicting ids[begin + 1:end + 1]
    end: int
    first_scored: int  # predictions for ids[first_scored:end + 1] count (not seen before)


def windows(n_tokens: int, block_size: int, stride: int) -> list[Window]:
    """The windows that score tokens 1 .. n_tokens - 1 once each."""
    if stride < 1 or stride > block_size:
        raise GptlabError(f"stride must be in [1, block_size={block_size}], got {stride}")
    if n_tokens < 2:
        raise GptlabError(f"the text has {n_tokens} token(s); perplexity needs at least 2")
    out = []
    scored = 1  # the next token that still needs a score
    begin = 0
    while scored < n_tokens:
        end = min(begin + block_size, n_tokens - 1)
        out.append(Window(begin, end, scored))
        scored = end + 1
        begin += stride
    return out


@torch.no_grad()
def perplexity(
    model: GPT, ids: list[int] | torch.Tensor, stride: int | None = None, batch_size: int = 8
) -> dict:
    """{"perplexity", "nll" (mean, nats), "tokens" (scored), "windows", "stride", "block_size"}."""
    model.eval()
    device = model.transformer.wte.weight.device
    ids = torch.as_tensor(ids, dtype=torch.long)
    L = model.config.block_size
    stride = L if stride is None else stride
    plan = windows(len(ids), L, stride)
    total_nll = 0.0
    total_tokens = 0
    for i in range(0, len(plan), batch_size):
        group = plan[i : i + batch_size]
        width = max(w.end - w.begin for w in group)
        x = torch.zeros(len(group), width, dtype=torch.long)
        y = torch.full((len(group), width), -100, dtype=torch.long)
        for row, w in enumerate(group):  # right-padded: a causal model never looks right
            n = w.end - w.begin
            x[row, :n] = ids[w.begin : w.end]
            targets = ids[w.begin + 1 : w.end + 1].clone()
            targets[: w.first_scored - w.begin - 1] = -100  # already scored by an earlier window
            y[row, :n] = targets
        logits = model(x.to(device)).logits.float()
        nll = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), y.to(device).reshape(-1), reduction="sum"
        )
        total_nll += nll.item()
        total_tokens += int((y != -100).sum())
    mean = total_nll / total_tokens
    return {
        "perplexity": math.exp(mean),
        "nll": mean,
        "tokens": total_tokens,
        "windows": len(plan),
        "stride": stride,
        "block_size": L,
    }
