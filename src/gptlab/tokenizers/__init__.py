"""Text <-> ids: characters (`char`), byte-level BPE (`bpe`, GPT-2's and your own), and GPT-2's
vocabulary files (`gpt2`). `Tokenizer.from_pretrained` picks the kind from a folder's files."""

from gptlab.tokenizers.base import IncrementalDecoder, Tokenizer
from gptlab.tokenizers.bpe import PATTERNS, BPETokenizer, train_bpe
from gptlab.tokenizers.char import CharTokenizer

# Every file a tokenizer of any kind may be saved as or read from (what a folder's tokenizer
# is), gathered from the kinds themselves (each registers by subclassing Tokenizer)
TOKENIZER_FILES = Tokenizer.all_files()

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "IncrementalDecoder",
    "PATTERNS",
    "TOKENIZER_FILES",
    "Tokenizer",
    "train_bpe",
]
