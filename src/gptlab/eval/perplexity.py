"""Perplexity: exp of the mean negative log-likelihood per token, by three methods that
differ in which tokens are scored and with what context (docs/evaluation.md sets them side by
side). A text longer than the model's block_size L is read in windows.

- "lm-eval" (the default): lm-evaluation-harness's rolling log-likelihood. The first token is
  predicted from the end-of-text token, so every token of the text is scored; windows of L
  predictions follow one another, and the last one reaches back for a full L tokens of
  context. Word and byte perplexity and bits per byte come with it, as the harness reports
  them for WikiText.
- "hf-guide": the recipe of transformers' docs ("Perplexity of fixed-length models"): window
  starts move by `stride`, each window's labels are its last (end - previous end) tokens, and
  each window's mean loss is weighted by its count of valid labels less one, as written there.
- "gptlab": each token t >= 1 scored exactly once, by the first window (starts move by
  `stride`) that predicts it, inputs ids[b : b + L] predicting ids[b + 1 : b + L + 1].
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from gptlab.config import PERPLEXITY_METHODS
from gptlab.errors import GptlabError
from gptlab.eval.logprobs import check_batch_size, next_token_logprobs
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


METHODS = PERPLEXITY_METHODS  # (in config.py, so that the command line loads without torch)


def rolling_windows(n_tokens: int, block_size: int) -> list[tuple[int, int, int]]:
    """lm-eval's windows over [prefix] + ids: (begin, end, scored) in that stream, inputs
    stream[begin:end] predicting stream[begin + 1:end + 1], of which the last `scored` count.
    Every token of ids is scored once."""
    if n_tokens < 1:
        raise GptlabError("the text has no tokens")
    L = block_size
    out = [(0, min(L, n_tokens), min(L, n_tokens))]
    predicted = out[0][2]
    while predicted < n_tokens:
        scored = min(n_tokens - predicted, L)
        end = predicted + scored  # stream positions: ids[i] is stream[i + 1]
        out.append((end - L, end, scored))
        predicted = end
    return out


@torch.no_grad()
def _token_logprobs(model: GPT, rows: list[list[int]], batch_size: int) -> list[torch.Tensor]:
    """For each row of ids: log p(row[i + 1] | row[: i + 1]) for every i, float64 (len - 1,)."""
    out = []
    for r, logp in zip(rows, next_token_logprobs(model, rows, batch_size), strict=True):
        targets = torch.tensor(r[1:], device=logp.device)
        out.append(logp.gather(-1, targets[:, None])[:, 0].cpu())
    return out


@torch.no_grad()
def perplexity(
    model: GPT,
    ids: list[int] | torch.Tensor,
    stride: int | None = None,
    batch_size: int = 8,
    method: str = "gptlab",
    prefix_id: int | None = None,
    text: str | None = None,
) -> dict:
    """{"perplexity" (per token), "nll" (mean, nats), "tokens" (scored), "windows", "method",
    "stride", "block_size"}; with `text` (the string ids encode), also "word_perplexity",
    "byte_perplexity" and "bits_per_byte" over the whole log-likelihood, as lm-eval defines
    them. lm-eval needs `prefix_id` (the end-of-text token) and ignores stride."""
    model.eval()
    ids = torch.as_tensor(ids, dtype=torch.long).tolist()
    L = model.config.block_size
    if method not in METHODS:
        raise GptlabError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    check_batch_size(batch_size)
    if method == "lm-eval":
        if prefix_id is None:
            raise GptlabError(
                "the lm-eval method predicts the first token from the end-of-text token, and "
                "this vocabulary has none; use --method gptlab or hf-guide"
            )
        stream = [prefix_id, *ids]
        plan = rolling_windows(len(ids), L)
        rows = [stream[b : e + 1] for b, e, _ in plan]
        scored = [
            lp[-n:]
            for lp, (_, _, n) in zip(_token_logprobs(model, rows, batch_size), plan, strict=True)
        ]
        total, count, stride = float(sum(s.sum() for s in scored)), len(ids), L
    elif method == "hf-guide":
        stride = L if stride is None else stride
        total, count, n_windows = _hf_guide(model, ids, L, stride, batch_size)
        plan = range(n_windows)
    else:
        stride = L if stride is None else stride
        plan = windows(len(ids), L, stride)
        rows = [ids[w.begin : w.end + 1] for w in plan]
        logps = _token_logprobs(model, rows, batch_size)
        total = float(
            sum(lp[w.first_scored - w.begin - 1 :].sum() for lp, w in zip(logps, plan, strict=True))
        )
        count = len(ids) - 1
    mean = -total / count
    result = {
        "perplexity": math.exp(mean),
        "nll": mean,
        "tokens": count,
        "windows": len(plan),
        "method": method,
        "stride": stride,
        "block_size": L,
    }
    if text is not None:  # lm-eval's word and byte normalisations of the same sum
        words, nbytes = len(re.split(r"\s+", text)), len(text.encode("utf-8"))
        result.update(
            word_perplexity=math.exp(-total / words),
            byte_perplexity=math.exp(-total / nbytes),
            bits_per_byte=-total / nbytes / math.log(2),
            words=words,
            bytes=nbytes,
        )
    return result


def _hf_guide(model: GPT, ids: list[int], L: int, stride: int, batch_size: int):
    """transformers' docs recipe -> (summed log-likelihood as it weighs it, its token count,
    windows). Per window: inputs ids[begin:end], labels the last end - prev_end of them; the
    mean loss over the valid shifted labels, weighted by (valid labels - 1)."""
    if stride < 1 or stride > L:
        raise GptlabError(f"stride must be in [1, block_size={L}], got {stride}")
    if len(ids) < 2:
        raise GptlabError(f"the text has {len(ids)} token(s); perplexity needs at least 2")
    spans, prev_end = [], 0
    for begin in range(0, len(ids), stride):
        end = min(begin + L, len(ids))
        spans.append((begin, end, end - prev_end))  # trg_len
        prev_end = end
        if end == len(ids):
            break
    logps = _token_logprobs(model, [ids[b:e] for b, e, _ in spans], batch_size)
    total, count = 0.0, 0
    for lp, (b, e, trg) in zip(logps, spans, strict=True):
        shifted_valid = min(trg, e - b - 1)  # labels at positions >= 1 that are not -100
        loss = -lp[len(lp) - shifted_valid :].mean().item() if shifted_valid else float("nan")
        weight = trg - 1  # the docs' "num_valid_tokens - batch_size"
        if weight > 0:
            total -= loss * weight
            count += weight
    return total, count, len(spans)
