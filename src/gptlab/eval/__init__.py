"""Measuring a model: perplexity on a text, and multiple-choice scoring (HellaSwag format)."""

from gptlab.eval.multiple_choice import Example, evaluate_multiple_choice, read_examples
from gptlab.eval.perplexity import perplexity, windows

__all__ = ["Example", "evaluate_multiple_choice", "perplexity", "read_examples", "windows"]
