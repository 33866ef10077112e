"""Measuring a model: perplexity (three methods), multiple-choice and last-word accuracy, as
lm-evaluation-harness scores them (docs/evaluation.md)."""

from gptlab.eval.multiple_choice import (
    Example,
    evaluate_last_word,
    evaluate_multiple_choice,
    read_examples,
    read_last_words,
)
from gptlab.eval.perplexity import METHODS, perplexity, windows

__all__ = [
    "METHODS",
    "Example",
    "evaluate_last_word",
    "evaluate_multiple_choice",
    "perplexity",
    "read_examples",
    "read_last_words",
    "windows",
]
