"""Text <-> ids: characters (`char`), byte-level BPE (`bpe`, GPT-2's and your own), and GPT-2's
vocabulary files (`gpt2`). `Tokenizer.from_pretrained` picks the kind from a folder's files."""

from gptlab.tokenizers.base import IncrementalDecoder, Tokenizer
from gptlab.tokenizers.bpe import PATTERNS, BPETokenizer, train_bpe
from gptlab.tokenizers.char import CharTokenizer

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "IncrementalDecoder",
    "PATTERNS",
    "Tokenizer",
    "train_bpe",
]
