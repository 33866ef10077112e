"""Character-level tokenizer: one id per distinct character, in sorted order."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_json
from gptlab.tokenizers.base import IncrementalDecoder, Tokenizer, checked_ids

CHAR_VOCAB_FILE = "char_vocab.json"


class CharTokenizer(Tokenizer):
    """Vocabulary = the sorted set of characters of a training text (tinyshakespeare: 65).

    Encoding runs in numpy: the text's code points are looked up in the sorted vocabulary with
    one `searchsorted`, so a megabyte takes milliseconds.
    """

    kind = "char"
    files = (CHAR_VOCAB_FILE,)
    looks_for = CHAR_VOCAB_FILE
    order = 0  # a folder with a character vocabulary is taken for one first

    @classmethod
    def recognises(cls, folder: Path) -> bool:
        return (Path(folder) / CHAR_VOCAB_FILE).is_file()

    def __init__(self, chars: Iterable[str]) -> None:
        chars = sorted(set(chars))
        if not chars:
            raise GptlabError("a character vocabulary needs at least one character")
        if any(len(c) != 1 for c in chars):
            raise GptlabError("a character vocabulary holds single characters only")
        self.chars: list[str] = chars
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if not text:
            raise GptlabError("cannot build a character vocabulary from an empty text")
        return cls(set(text))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def eot_id(self) -> int | None:
        return None

    def encode(self, text: str, replacement: str | None = None) -> list[int]:
        """Ids of the characters of `text`. A character outside the vocabulary is an error
        naming it and its position, unless `replacement` (a character in the vocabulary)
        should stand in for it."""
        return self.encode_array(text, replacement).tolist()

    def encode_array(self, text: str, replacement: str | None = None) -> np.ndarray:
        try:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        except UnicodeEncodeError as e:  # a lone surrogate: not a character of any text
            raise GptlabError(
                f"the text holds {text[e.start]!r} at position {e.start}, which is not a "
                "character (invalid UTF-8 or a lone surrogate)"
            ) from None
        ids = np.searchsorted(self._codes, codes)
        known = self._codes[np.minimum(ids, len(self._codes) - 1)] == codes
        if not known.all():
            if replacement is None:
                pos = int(np.argmin(known))
                raise GptlabError(
                    f"character {text[pos]!r} at position {pos} is not in the vocabulary "
                    f"of {self.vocab_size} characters"
                )
            if replacement not in self.chars:
                raise GptlabError(f"replacement {replacement!r} is not in the vocabulary")
            ids[~known] = self.chars.index(replacement)
        return ids.astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        ids = checked_ids(ids, len(chars))
        return "".join(chars[i] for i in ids)

    def decoder(self) -> IncrementalDecoder:
        return _CharDecoder(self)

    def save(self, directory: str | os.PathLike) -> None:
        atomic_write_json(Path(directory) / CHAR_VOCAB_FILE, {"kind": "char", "chars": self.chars})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CharTokenizer:
        path = Path(directory) / CHAR_VOCAB_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            chars = data["chars"]
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise GptlabError(f"{path}: not a character vocabulary ({e})") from e
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise GptlabError(f"{path}: 'chars' must be a list of characters")
        if chars != sorted(set(chars)):
            raise GptlabError(f"{path}: 'chars' must be sorted, each character once")
        return cls(chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class _CharDecoder(IncrementalDecoder):
    def __init__(self, tokenizer: CharTokenizer) -> None:
        self.tokenizer = tokenizer

    def step(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(ids)

    def flush(self) -> str:
        return ""
