"""A small model for the web page's tests."""

import pytest
import torch

from gptlab import GPT, CharTokenizer, GPTConfig

TEXT = "To be, or not to be: that is the question.\n" * 20


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A small random character-level model folder (weights and tokenizer)."""
    root = tmp_path_factory.mktemp("serve") / "model"
    tok = CharTokenizer.from_text(TEXT)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=32)
    GPT(config).save_pretrained(root)
    tok.save(root)
    return root
