"""Settings as dataclasses: the GPT-2 model shape (`GPTConfig`) and its named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gptlab.errors import GptlabError

GPT2_VOCAB_SIZE = 50257


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT-2 network.

    vocab_size: number of token ids the model reads and predicts.
    block_size: the longest sequence (Hugging Face calls it n_positions).
    padded_vocab_size: optional larger embedding table (e.g. 50304, a multiple of 64) for
        faster matrix products; the extra rows are never predicted and are stripped on export.
    """

    vocab_size: int = GPT2_VOCAB_SIZE
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    layer_norm_eps: float = 1e-5
    padded_vocab_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise GptlabError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise GptlabError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                "every head needs n_embd / n_head channels"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise GptlabError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.padded_vocab_size is not None and self.padded_vocab_size < self.vocab_size:
            raise GptlabError(
                f"padded_vocab_size={self.padded_vocab_size} is smaller than "
                f"vocab_size={self.vocab_size}"
            )

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def embedding_rows(self) -> int:
        """Rows of the token embedding table: padded_vocab_size if set, else vocab_size."""
        return self.padded_vocab_size or self.vocab_size

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """A named configuration (see `PRESETS`), with optional field overrides."""
        if name not in PRESETS:
            raise GptlabError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes) -> GPTConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, GPTConfig] = {
    # The four published GPT-2 sizes (vocabulary 50257, 1024 positions).
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
    # Small models that train on a laptop CPU; vocab_size follows the tokenizer used.
    "shakespeare-char": GPTConfig(
        vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2
    ),
    "tiny": GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64),
}
