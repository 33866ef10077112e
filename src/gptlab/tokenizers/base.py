"""What every tokenizer offers: text <-> ids, a streaming decoder, save and load."""

from __future__ import annotations

import operator
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path

from gptlab.errors import GptlabError


def checked_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """ids as a list of ints in [0, vocab_size), or a GptlabError naming the first that is not
    (a negative id would otherwise index from the end: a wrong character and no error)."""
    out = []
    for i in ids:
        try:
            j = operator.index(i)  # ints, numpy and 0-d torch integers; not floats or bools
        except TypeError:
            j = None
        if j is None or isinstance(i, bool) or not 0 <= j < vocab_size:
            raise GptlabError(f"id {i!r} is out of range for a vocabulary of {vocab_size}")
        out.append(j)
    return out


class Tokenizer(ABC):
    """Text -> list of ids -> text. `vocab_size` ids in [0, vocab_size); `eot_id` is the
    end-of-text id that separates documents, or None where the vocabulary has none."""

    kind: str

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def eot_id(self) -> int | None: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def check_model(self, vocab_size: int, where: str) -> None:
        """A model beside this tokenizer must read exactly its ids: with fewer rows, encoded
        text would index past the embedding; with more, sampled ids would have no text (a
        char_vocab.json of 59 characters beside a 76-row model evaluated without a word)."""
        if self.vocab_size != vocab_size:
            raise GptlabError(
                f"{where}: the tokenizer has {self.vocab_size} ids but the model reads "
                f"{vocab_size}; they do not belong together (a tokenizer file replaced?)"
            )

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @abstractmethod
    def decoder(self) -> IncrementalDecoder:
        """A decoder that takes ids one group at a time and returns only complete characters
        (what streaming needs: a character split across two tokens is held until it is whole)."""

    @abstractmethod
    def save(self, directory: str | os.PathLike) -> None:
        """Write the files that `Tokenizer.from_pretrained(directory)` reads back."""

    @staticmethod
    def from_pretrained(path_or_name: str | os.PathLike) -> Tokenizer:
        """A folder holding a gptlab character vocabulary, GPT-2-format BPE files
        (vocab.json + merges.txt or encoder.json + vocab.bpe), or a gpt2 hub name (online)."""
        from gptlab import hub
        from gptlab.tokenizers import gpt2
        from gptlab.tokenizers.bpe import BPETokenizer
        from gptlab.tokenizers.char import CHAR_VOCAB_FILE, CharTokenizer

        folder = Path(path_or_name).expanduser()
        if not folder.exists():
            name = str(path_or_name)
            if not hub.looks_like_repo_id(name):
                raise GptlabError(f"{name}: no such folder")
            folder = hub.snapshot(name, ["vocab.json", "merges.txt"])
        if not folder.is_dir():
            raise GptlabError(f"{folder}: not a folder (expected tokenizer files inside)")
        if (folder / CHAR_VOCAB_FILE).is_file():
            return CharTokenizer.load(folder)
        if gpt2.find_files(folder):
            return BPETokenizer.load(folder)
        names = [CHAR_VOCAB_FILE] + [" + ".join(pair) for pair in gpt2.FILE_NAMES]
        raise GptlabError(f"{folder}: no tokenizer files (looked for {', or '.join(names)})")


class IncrementalDecoder(ABC):
    @abstractmethod
    def step(self, ids: Iterable[int]) -> str:
        """Decode more ids; return the text that is now complete."""

    @abstractmethod
    def flush(self) -> str:
        """The end of the stream: whatever is held back (an incomplete character becomes the
        replacement character)."""
