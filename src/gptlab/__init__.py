"""gptlab: GPT-2 from the first ideas of attention to a model you can train, load and sample.

The public names are imported when first used (PEP 562), so `gptlab --help` answers without
loading PyTorch and a Ctrl-C while it loads is the command's own one-line interrupt.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_HOMES = {
    "GPT": "gptlab.model",
    "GPTOutput": "gptlab.model",
    "GPTConfig": "gptlab.config",
    "PRESETS": "gptlab.config",
    "GptlabError": "gptlab.errors",
    "BPETokenizer": "gptlab.tokenizers",
    "CharTokenizer": "gptlab.tokenizers",
    "Tokenizer": "gptlab.tokenizers",
    "train_bpe": "gptlab.tokenizers",
    "load_for_inference": "gptlab.model.load",
}

__all__ = [
    "GPT",
    "GPTConfig",
    "GPTOutput",
    "GptlabError",
    "PRESETS",
    "BPETokenizer",
    "CharTokenizer",
    "Tokenizer",
    "train_bpe",
    "load_for_inference",
    "__version__",
]

if TYPE_CHECKING:  # what type checkers and editors see
    from gptlab.config import PRESETS, GPTConfig
    from gptlab.errors import GptlabError
    from gptlab.model import GPT, GPTOutput
    from gptlab.model.load import load_for_inference
    from gptlab.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, train_bpe


# subpackages reached as attributes (`gptlab.model.GPT` after `import gptlab`), as when this
# file imported them eagerly
_SUBMODULES = {
    "attention",
    "cli",
    "config",
    "data",
    "errors",
    "eval",
    "fileio",
    "generate",
    "hardware",
    "hub",
    "model",
    "serve",
    "tokenizers",
    "train",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"gptlab.{name}")
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'gptlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
