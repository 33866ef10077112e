"""Multiple-choice scoring in HellaSwag's format: which ending does the model find likeliest?

Each line of the JSONL file is {"ctx": ..., "endings": [...], "label": i} (or "ctx_a" and
"ctx_b" instead of "ctx", joined by a space). Context and ending are tokenized separately and
concatenated, the ending with its own leading space (" " + ending), as llm.c's HellaSwag script
does. An ending's score is the log-probability of its tokens given the context and the tokens
of the ending before them. Three accuracies:

- acc: the highest summed log-probability wins;
- acc_norm_token: the highest mean log-probability per token (llm.c's and nanoGPT's scripts);
- acc_norm: the summed log-probability divided by the ending's length in UTF-8 bytes (" " +
  ending), as lm-evaluation-harness normalises.

A context + ending longer than block_size keeps its last block_size tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.tokenizers import Tokenizer


@dataclass
class Example:
    context: str
    endings: list[str]
    label: int
    line: int


def read_examples(path: str | Path, limit: int | None = None) -> list[Example]:
    """The examples of a HellaSwag-format JSONL file (the first `limit`, if given); any bad
    line is a GptlabError naming the file and the line."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise GptlabError(f"--limit must be at least 1, got {limit}")
    if path.is_dir():
        raise GptlabError(f"{path}: is a folder, not a JSONL file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise GptlabError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise GptlabError(f"{path}: not UTF-8 text ({e})") from None
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except ValueError as e:
            raise GptlabError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise GptlabError(f"{where}: expected a JSON object")
        if "ctx" in row:
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
        empty = [i for i, e in enumerate(endings) if not e.strip()]
        if empty:  # nothing to score: every model would "choose" it with probability 1
            raise GptlabError(f"{where}: ending {empty[0]} is empty")
        if isinstance(label, str) and label.isdigit():
            label = int(label)
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(endings):
            raise GptlabError(
                f"{where}: label {label!r} is not an index into the {len(endings)} endings"
            )
        examples.append(Example(context, endings, label, number))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise GptlabError(f"{path}: no examples")
    return examples


@torch.no_grad()
def score_endings(
    model: GPT, tokenizer: Tokenizer, example: Example
) -> list[tuple[float, int, int]]:
    """(summed log-probability, number of tokens, bytes) of each ending given the context."""
    model.eval()
    device = model.transformer.wte.weight.device
    ctx = tokenizer.encode(example.context)
    rows, spans = [], []
    for ending in example.endings:
        end = tokenizer.encode(" " + ending)
        if not end:
            raise GptlabError(f"line {example.line}: an ending is empty")
        seq = (ctx + end)[-model.config.block_size :]
        rows.append(seq)
        spans.append(min(len(end), len(seq) - 1))
    width = max(len(r) for r in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):  # right-padded: positions after a row's end are ignored
        x[i, : len(r)] = torch.tensor(r)
    logprobs = F.log_softmax(model(x.to(device)).logits.float(), dim=-1)
    out = []
    for i, (r, n) in enumerate(zip(rows, spans, strict=True)):
        targets = torch.tensor(r[len(r) - n :], device=device)
        positions = torch.arange(len(r) - n - 1, len(r) - 1, device=device)  # predict targets
        total = logprobs[i, positions, targets].sum().item()
        out.append((total, n, len((" " + example.endings[i]).encode("utf-8"))))
    return out


def evaluate_multiple_choice(
    model: GPT, tokenizer: Tokenizer, examples: list[Example], progress: bool = False
) -> dict:
    """{"acc", "acc_norm_token", "acc_norm", "examples", "scores": per example}."""
    from tqdm import tqdm

    hits = {"acc": 0, "acc_norm_token": 0, "acc_norm": 0}
    scores = []
    for ex in tqdm(examples, desc="multiple choice", disable=not progress, leave=False):
        s = score_endings(model, tokenizer, ex)
        by = {
            "acc": [t for t, _, _ in s],
            "acc_norm_token": [t / n for t, n, _ in s],
            "acc_norm": [t / b for t, _, b in s],
        }
        for key, values in by.items():
            hits[key] += int(max(range(len(values)), key=values.__getitem__) == ex.label)
        scores.append({"line": ex.line, "label": ex.label, "logprob_sum": by["acc"],
                       "tokens": [n for _, n, _ in s]})  # fmt: skip
    n = len(examples)
    return {**{k: v / n for k, v in hits.items()}, "examples": n, "scores": scores}
