"""Sampling from a GPT: KV cache, temperature / top-k / top-p, batches of prompts of different
lengths, stopping at end-of-text, streaming.

How a step works: the model turns the context into a distribution over the next token (the
logits of the last position); we pick one (argmax when temperature is 0, else a draw after
temperature, top-k and top-p), append it, and repeat. With the KV cache the prompt runs once
and every later step feeds only the newest token: the keys and values of earlier positions are
kept (`gptlab.model.cache.KVCache`), since a causal model's past never changes.

Prompts of different lengths share a batch by left padding: `attention_mask` marks real
tokens, padded keys are never attended to and positions count from each row's first real
token, so every row computes exactly what it would alone.

`simple_generate` is the plain loop (nanoGPT's fifteen lines: crop, forward, pick, append)
for one row at a time; the engine, `stream`, is tested against it token for token. Sampling
runs the model it is given and changes nothing in it: the fast CPU path is installed once
where a model is loaded for inference (`gptlab.model.load`, `gptlab.model.fast`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from gptlab.errors import GptlabError
from gptlab.model.cache import KVCache

# The model imports this module (GPT.generate), never the other way round: `model` below is a
# gptlab.model.GPT, typed as the nn.Module it is, and read only through its config,
# hidden_states, forward and lm_head.
GPT = torch.nn.Module


def start_ids(tokenizer, prompt: str) -> list[int]:
    """The ids sampling starts from: the prompt's, or, for no prompt, what a text starts
    after (GPT-2's end-of-text token; a newline for a character vocabulary that has one)."""
    from gptlab.tokenizers import CharTokenizer

    if prompt:
        return tokenizer.encode(prompt)
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    if isinstance(tokenizer, CharTokenizer) and "\n" in tokenizer.chars:
        return tokenizer.encode("\n")
    return [0]


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not 0 <= temperature < float("inf"):  # also refuses nan
        raise GptlabError(f"temperature must be >= 0 and finite, got {temperature}")
    if top_k is not None and top_k < 1:
        raise GptlabError(f"top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise GptlabError(f"top_p must be in (0, 1], got {top_p}")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) -> next ids (B, 1). Temperature 0 is greedy (argmax). top_k keeps the k
    likeliest tokens; top_p keeps the smallest set whose probability reaches p."""
    if temperature == 0:  # (in float32: the same ids; a bfloat16 argmax is 4x slower on a CPU)
        return logits.float().argmax(dim=-1, keepdim=True)
    probs = F.softmax(sample_filter(scale(logits.float(), temperature), top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits (B, V) / temperature, the softmax's input. Below 1e-4 the largest logit of each
    row is taken off first, so that a temperature as small as 1e-40 (where logits / T is inf
    and softmax NaN) leaves the row's argmax, its ties sharing the mass: the limit of T -> 0."""
    if temperature >= 1e-4:  # the usual path: the very bits of logits / T
        return logits / temperature
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    return torch.where(shifted == 0, 0.0, shifted / temperature)  # 0 / T: T may round to 0


def sample_filter(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """logits (B, V) -> the same with -inf outside the tokens top_k / top_p keep (what
    sampling draws from, after temperature)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already hold top_p of the mass
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop[..., 0] = False  # the likeliest always stays (a top_p that rounds to 0 in float32)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.no_grad()
def stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    attention_mask: torch.Tensor | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), step by step (see `generate`). A row that has
    produced eos_id yields eos_id from then on; the stream ends early once every row has."""
    check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise GptlabError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if idx.dim() != 2 or idx.size(1) == 0:
        raise GptlabError(
            f"idx must be (batch, tokens) with at least one token, got {tuple(idx.shape)}"
        )
    block = model.config.block_size
    if idx.size(1) > block:
        warnings.warn(
            f"the prompt has {idx.size(1)} tokens; the model reads only the last {block} "
            "(its block_size)",
            stacklevel=3,
        )
    B = idx.size(0)
    device = idx.device
    mask = None if attention_mask is None else attention_mask.to(device=device, dtype=torch.bool)
    if mask is None and eos_id is not None and B > 1:
        mask = torch.ones_like(idx, dtype=torch.bool)  # finished rows become padding
    done = torch.zeros(B, dtype=torch.bool, device=device)
    tokens = idx
    vocab = model.config.vocab_size

    def head(hidden: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B, vocab), no padded ids
        return model.lm_head(hidden)[..., :vocab]

    cache = None
    if use_cache:
        cache = KVCache(model.config, B, block, device, model.transformer.wte.weight.dtype)

    def window_logits() -> torch.Tensor:
        """Run the last block_size tokens from scratch (refilling the cache, if any)."""
        if cache is not None:
            cache.length = 0
        window_mask = None if mask is None else mask[:, -block:]
        hidden = model.hidden_states(tokens[:, -block:], window_mask, cache)
        return head(hidden[:, -1])

    was_training = model.training
    model.eval()
    try:
        logits = window_logits()
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator).squeeze(1)  # (B,)
            finished_before = done.clone()
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            yield nxt
            if step == max_new_tokens - 1 or (eos_id is not None and bool(done.all())):
                return
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            if mask is not None:
                mask = torch.cat([mask, ~finished_before[:, None]], dim=1)
            if cache is not None and cache.length < block:  # one new position, cached past
                step_mask = None if mask is None else mask[:, -(cache.length + 1) :]
                hidden = model.hidden_states(nxt[:, None], step_mask, cache)
                logits = head(hidden[:, -1])
            else:  # no cache, or the window is full and slides by one: recompute it
                logits = window_logits()
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    attention_mask: torch.Tensor | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Prompt ids (B, T) -> (B, T + max_new_tokens): the prompt, then the new tokens.

    temperature 0 is greedy. attention_mask (B, T) marks real tokens of left-padded prompts.
    Rows that produce eos_id continue with eos_id (padding) while the others go on. A prompt
    longer than block_size is read from its last block_size tokens (with a warning); past
    block_size the window slides, and each step then recomputes the window (the cache cannot
    be reused when every position shifts)."""
    new = list(
        stream(
            model,
            idx,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            attention_mask,
            eos_id,
            generator,
            use_cache,
        )
    )
    if len(new) < max_new_tokens:  # every row ended: pad with eos_id
        pad = torch.full((idx.size(0),), eos_id, dtype=idx.dtype, device=idx.device)
        new += [pad] * (max_new_tokens - len(new))
    if not new:
        return idx
    return torch.cat([idx, torch.stack(new, dim=1).to(idx.dtype)], dim=1)


@torch.no_grad()
def simple_generate(
    model: GPT, ids: list[int], max_new_tokens: int, eos_id: int | None = None
) -> list[int]:
    """The plain greedy loop for one prompt, the reference `generate` is tested against: no
    cache, no batch, no padding; each step reads the last block_size ids from scratch."""
    ids = list(ids)
    for _ in range(max_new_tokens):
        window = torch.tensor(
            [ids[-model.config.block_size :]], device=model.transformer.wte.weight.device
        )
        logits = model(window).logits[0, -1]  # the next token's scores, (vocab_size,)
        ids.append(int(logits.argmax()))
        if ids[-1] == eos_id:
            break
    return ids
