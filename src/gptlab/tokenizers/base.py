"""What every tokenizer offers: text <-> ids, a streaming decoder, save and load."""

from __future__ import annotations

import operator
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

from gptlab import hub
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
    end-of-text id that separates documents, or None where the vocabulary has none.

    Each kind registers itself by subclassing (no list of kinds to keep here): `files`, every
    file it may save or read; `looks_for`, what a folder of it holds (for messages); `order`,
    which kind a folder is taken for first; `recognises` and `load`, the folder -> tokenizer.
    `from_pretrained` asks the kinds in order."""

    kind: str
    files: tuple[str, ...] = ()
    looks_for: str = ""
    order: int = 0
    _kinds: list[type[Tokenizer]] = []  # every registered kind (the base class's own list)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "files" in cls.__dict__ and cls.files:  # a kind of its own (not a mere subclass)
            Tokenizer._kinds.append(cls)
            Tokenizer._kinds.sort(key=lambda kind: kind.order)

    @classmethod
    def all_files(cls) -> tuple[str, ...]:
        """Every file a tokenizer of any registered kind may be saved as or read from."""
        return tuple(dict.fromkeys(f for kind in Tokenizer._kinds for f in kind.files))

    @classmethod
    def recognises(cls, folder: Path) -> bool:
        """Whether `folder` holds a tokenizer of this kind."""
        raise NotImplementedError

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        raise NotImplementedError

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

    def same_ids(self, other: Tokenizer) -> bool:
        """True if every id stands for the same text in both (one vocabulary, whatever files
        or kind hold it): data prepared with `other` may train a model of this one."""
        return self.vocab_size == other.vocab_size and all(
            self.decode([i]) == other.decode([i]) for i in range(self.vocab_size)
        )

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
        folder = Path(path_or_name).expanduser()
        if not folder.exists():
            name = str(path_or_name)
            if not hub.looks_like_repo_id(name):
                raise GptlabError(f"{name}: no such folder")
            folder = hub.snapshot(name, ["vocab.json", "merges.txt"])
        if not folder.is_dir():
            raise GptlabError(f"{folder}: not a folder (expected tokenizer files inside)")
        for kind in Tokenizer._kinds:
            if kind.recognises(folder):
                return kind.load(folder)
        names = ", or ".join(kind.looks_for for kind in Tokenizer._kinds)
        raise GptlabError(f"{folder}: no tokenizer files (looked for {names})")


class IncrementalDecoder(ABC):
    @abstractmethod
    def step(self, ids: Iterable[int]) -> str:
        """Decode more ids; return the text that is now complete."""

    @abstractmethod
    def flush(self) -> str:
        """The end of the stream: whatever is held back (an incomplete character becomes the
        replacement character)."""
