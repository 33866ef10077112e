"""gptlab: GPT-2 from the first ideas of attention to a model you can train, load and sample."""

from gptlab.config import PRESETS, GPTConfig
from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTOutput
from gptlab.model.load import load_for_inference
from gptlab.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, train_bpe

__version__ = "0.1.0"

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
