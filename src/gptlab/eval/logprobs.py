"""The one computation every evaluation shares: the model's log-probabilities for the next
token at every position of many rows of ids, in right-padded batches.

Padding sits to the right of each row, where a causal model never looks, so a row's numbers
are those it gets alone (tests/eval compare batched and one-at-a-time). float64 log-softmax,
as lm-evaluation-harness sums them.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from gptlab.errors import GptlabError


def check_batch_size(batch_size: int) -> None:
    """Every evaluation's rule for its batch size (the CLI asks before it loads a model)."""
    if isinstance(batch_size, bool) or batch_size < 1:
        raise GptlabError(f"batch_size must be at least 1, got {batch_size}")


@torch.no_grad()
def next_token_logprobs(
    model: torch.nn.Module, rows: list[list[int]], batch_size: int
) -> Iterator[torch.Tensor]:
    """For each row of ids, in order: log p(next token | row[: i + 1]) over the vocabulary at
    every position i but the last, (len(row) - 1, V) float64 (a view into its batch: use it
    before asking for the next row of another batch)."""
    check_batch_size(batch_size)
    device = model.transformer.wte.weight.device
    for i in range(0, len(rows), batch_size):
        group = rows[i : i + batch_size]
        x = torch.zeros(len(group), max(len(r) for r in group) - 1, dtype=torch.long)
        for j, r in enumerate(group):
            x[j, : len(r) - 1] = torch.tensor(r[:-1])
        logp = F.log_softmax(model(x.to(device)).logits.double(), dim=-1)
        for j, r in enumerate(group):
            yield logp[j, : len(r) - 1]
