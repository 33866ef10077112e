"""Multiple-choice scoring in HellaSwag's format, and last-word accuracy (LAMBADA), scored as
lm-evaluation-harness scores them.

Each line of a multiple-choice JSONL file is {"ctx": ..., "endings": [...], "label": i} (or
"ctx_a" and "ctx_b", joined by a space; `hellaswag=True` applies the harness's HellaSwag
clean-up to the raw dataset's rows). An ending is the continuation " " + ending of the
context, tokenized as the harness does: context + continuation encoded whole, the context's
own tokens cut off the front (spaces ending the context move to the continuation). Its score
is the summed log-probability of its tokens. The harness's metrics:

- acc: the highest summed log-probability wins;
- acc_norm: the sum divided by the ending's length in characters (without the space);
- acc_bytes: the sum divided by the ending's length in UTF-8 bytes;
- acc_norm_token (gptlab's, as llm.c's HellaSwag script): the mean per token.

A context + ending longer than block_size keeps its last block_size + 1 tokens.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab.errors import GptlabError
from gptlab.eval.logprobs import check_batch_size, next_token_logprobs
from gptlab.fileio import read_jsonl
from gptlab.model import GPT
from gptlab.tokenizers import Tokenizer


@dataclass
class Example:
    context: str
    endings: list[str]
    label: int
    line: int
    source: str = ""  # the file it came from, for messages


def _jsonl_objects(path: Path, limit: int | None):
    """(line number, JSON object) for each non-blank line; a bad line names file and line."""
    if limit is not None and limit < 1:
        raise GptlabError(f"--limit must be at least 1, got {limit}")
    yield from read_jsonl(path)


def read_examples(
    path: str | Path, limit: int | None = None, hellaswag: bool = False
) -> list[Example]:
    """The examples of a HellaSwag-format JSONL file (the first `limit`, if given); any bad
    line is a GptlabError naming the file and the line. hellaswag: rows of the raw dataset
    (activity_label, ctx_a, ctx_b, endings), prepared as the harness's hellaswag task does."""
    path = Path(path)
    examples = []
    for number, row in _jsonl_objects(path, limit):
        where = f"{path}, line {number}"
        if hellaswag:
            for field in ("activity_label", "ctx_a", "ctx_b"):
                if not isinstance(row.get(field), str):
                    raise GptlabError(f"{where}: missing text field {field!r} (raw HellaSwag)")
            ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
            context = hellaswag_clean(row["activity_label"] + ": " + ctx)
        elif "ctx" in row:
            context = row["ctx"]
        elif "ctx_a" in row and "ctx_b" in row:
            context = f"{row['ctx_a']} {row['ctx_b']}".rstrip()
        else:
            raise GptlabError(f"{where}: missing field 'ctx' (or 'ctx_a' and 'ctx_b')")
        for field in ("endings", "label"):
            if field not in row:
                raise GptlabError(f"{where}: missing field {field!r}")
        endings, label = row["endings"], row["label"]
        if not isinstance(endings, list) or len(endings) < 2:
            raise GptlabError(f"{where}: 'endings' must be a list of at least 2 strings")
        if not all(isinstance(e, str) for e in endings) or not isinstance(context, str):
            raise GptlabError(f"{where}: context and endings must be strings")
        if hellaswag:
            endings = [hellaswag_clean(e) for e in endings]
        empty = [i for i, e in enumerate(endings) if not e.strip()]
        if empty:  # nothing to score: every model would "choose" it with probability 1
            raise GptlabError(f"{where}: ending {empty[0]} is empty")
        if isinstance(label, str) and label.isdigit():
            label = int(label)
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(endings):
            raise GptlabError(
                f"{where}: label {label!r} is not an index into the {len(endings)} endings"
            )
        examples.append(Example(context, endings, label, number, str(path)))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise GptlabError(f"{path}: no examples")
    return examples


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str):
    """(context ids, continuation ids) as the harness splits them (its _encode_pair). An empty
    context is the end-of-text token, as the harness makes it: the first continuation token
    needs a position that predicts it."""
    if context == "":
        if tokenizer.eot_id is None:
            raise GptlabError(
                "an empty context is scored after the end-of-text token, which this "
                "tokenizer has none of; give every example some context"
            )
        return [tokenizer.eot_id], tokenizer.encode(continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def loglikelihoods(
    model: GPT, requests: list[tuple[list[int], list[int]]], batch_size: int = 8
) -> list[tuple[float, bool]]:
    """For each (context ids, continuation ids): the continuation's summed log-probability and
    whether greedy decoding would produce it (every token the argmax), as the harness's
    loglikelihood. Padded batches of `batch_size` requests give the same numbers as one at a
    time: padding sits to the right, where a causal model never looks."""
    model.eval()
    if any(not cont for _, cont in requests):
        raise GptlabError("a continuation has no tokens")
    L = model.config.block_size
    rows = [(ctx + cont)[-(L + 1) :] for ctx, cont in requests]  # the last L + 1 ids
    out = []
    for (_, cont), logp in zip(requests, next_token_logprobs(model, rows, batch_size), strict=True):
        picked = logp[len(logp) - len(cont) :]  # the positions that predict cont
        target = torch.tensor(cont, device=logp.device)
        total = picked.gather(-1, target[:, None]).sum().item()
        out.append((total, bool((picked.argmax(-1) == target).all())))
    return out


def evaluate_multiple_choice(
    model: GPT,
    tokenizer: Tokenizer,
    examples: list[Example],
    progress: bool = False,
    batch_size: int = 8,
) -> dict:
    """{"acc", "acc_norm", "acc_bytes", "acc_norm_token", "examples", "scores": per example}.
    batch_size: examples per forward pass (all their endings in one padded batch)."""
    from tqdm import tqdm

    check_batch_size(batch_size)
    hits = {"acc": 0, "acc_norm": 0, "acc_bytes": 0, "acc_norm_token": 0}
    scores = []
    bar = tqdm(
        total=len(examples), desc="multiple choice", leave=False, disable=None if progress else True
    )  # None: on a terminal only
    try:
        for i in range(0, len(examples), batch_size):
            group = examples[i : i + batch_size]
            L = model.config.block_size
            requests = [
                _pair(
                    tokenizer, ex.context, " " + e, L, f"{_where(ex.source, ex.line)}, ending {k}"
                )
                for ex in group
                for k, e in enumerate(ex.endings)
            ]
            lls = iter(loglikelihoods(model, requests, batch_size=len(requests)))
            pairs = iter(requests)
            for ex in group:
                sums = [next(lls)[0] for _ in ex.endings]
                tokens = [len(next(pairs)[1]) for _ in ex.endings]
                by = {
                    "acc": sums,
                    "acc_norm": [t / len(e) for t, e in zip(sums, ex.endings, strict=True)],
                    "acc_bytes": [
                        t / len(e.encode("utf-8")) for t, e in zip(sums, ex.endings, strict=True)
                    ],
                    "acc_norm_token": [t / n for t, n in zip(sums, tokens, strict=True)],
                }
                choice = {k: max(range(len(v)), key=v.__getitem__) for k, v in by.items()}
                for key, picked in choice.items():
                    hits[key] += int(picked == ex.label)
                scores.append(
                    {
                        "line": ex.line,
                        "label": ex.label,
                        "logprob_sum": sums,
                        "tokens": tokens,
                        "choice": choice,
                    }
                )
            bar.update(len(group))
    finally:  # closed on an error too, before the error is printed
        bar.close()
    n = len(examples)
    return {**{k: v / n for k, v in hits.items()}, "examples": n, "scores": scores}


def _where(source: str, line: int) -> str:
    return f"{source}, line {line}" if source else f"line {line}"


def _pair(tokenizer: Tokenizer, context: str, continuation: str, block_size: int, where: str):
    """encode_pair, with a GptlabError naming the example where its continuation cannot be
    scored: none of it fits in the model's block (the context may be cut; the continuation
    may not)."""
    try:
        ctx, cont = encode_pair(tokenizer, context, continuation)
    except GptlabError as e:
        raise GptlabError(f"{where}: {e}") from None
    if len(cont) > block_size:
        raise GptlabError(
            f"{where}: the continuation has {len(cont)} tokens, more than the model reads at "
            f"once (block_size {block_size})"
        )
    return ctx, cont


def hellaswag_clean(text: str) -> str:
    """The harness's HellaSwag clean-up: strip, WikiHow's " [title]" -> ". ", other bracketed
    artefacts dropped, double spaces made single."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def read_last_words(path: str | Path, limit: int | None = None) -> list[tuple[str, str, int]]:
    """LAMBADA-format JSONL ({"text": ...}) -> (context, " " + last word, line) per passage,
    split at the last space, as the harness's lambada_openai task does."""
    path = Path(path)
    out = []
    for number, row in _jsonl_objects(path, limit):
        text = row.get("text")
        if not isinstance(text, str) or " " not in text.strip():
            raise GptlabError(f'{path}, line {number}: expected {{"text": "... word"}}')
        context, last = text.rsplit(" ", 1)
        if not context or not last:
            raise GptlabError(f"{path}, line {number}: the text must end in a word")
        out.append((context, " " + last, number))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise GptlabError(f"{path}: no passages")
    return out


def evaluate_last_word(
    model: GPT,
    tokenizer: Tokenizer,
    passages: list[tuple[str, str, int]],
    batch_size: int = 8,
    source: str = "",
) -> dict:
    """{"acc" (greedy decoding gives the last word exactly), "perplexity" (of the last words:
    exp of minus the mean of their summed log-probabilities, as the harness aggregates),
    "examples", "scores"}. source: the passages' file, named in messages."""
    L = model.config.block_size
    requests = [_pair(tokenizer, c, w, L, _where(source, line)) for c, w, line in passages]
    results = loglikelihoods(model, requests, batch_size)
    n = len(results)
    return {
        "acc": sum(greedy for _, greedy in results) / n,
        "perplexity": math.exp(-sum(ll for ll, _ in results) / n),
        "examples": n,
        "scores": [
            {"line": line, "logprob_sum": ll, "greedy": greedy}
            for (ll, greedy), (_, _, line) in zip(results, passages, strict=True)
        ],
    }
