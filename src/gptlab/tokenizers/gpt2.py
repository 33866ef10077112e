"""GPT-2's vocabulary files: the byte <-> printable-character table, and reading and writing
`vocab.json` + `merges.txt` (also named `encoder.json` + `vocab.bpe`).

A byte-level BPE token is a byte string. GPT-2's files write each byte as one printable
character (`bytes_to_unicode`), so that a token is a plain JSON string and a merge line is two
such strings separated by one space (the space byte itself is written 'Ġ').
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_json, atomic_write_text

# (vocabulary, merges) file names, in the order they are looked for.
FILE_NAMES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
MERGES_HEADER = "#version: 0.2"
EOT = "<|endoftext|>"


@cache
def bytes_to_unicode() -> dict[int, str]:
    """Each of the 256 bytes -> one printable character. Printable Latin-1 bytes stand for
    themselves; the rest (control characters, space, ...) take the characters from 256 up, in
    byte order. GPT-2's files and ids depend on exactly this table."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in keep}
    extra = 256
    for b in range(256):
        if b not in table:
            table[b] = chr(extra)
            extra += 1
    return dict(sorted(table.items()))


@cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_str(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def str_to_token(text: str) -> bytes | None:
    """The bytes a vocabulary string stands for, or None if it is not in the byte alphabet
    (then it can only be a special token such as <|endoftext|>)."""
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in text)
    except KeyError:
        return None


def find_files(folder: Path) -> tuple[Path, Path] | None:
    for vocab_name, merges_name in FILE_NAMES:
        if (folder / vocab_name).is_file() and (folder / merges_name).is_file():
            return folder / vocab_name, folder / merges_name
    return None


def read_vocab(path: Path) -> dict[str, int]:
    """token string -> id, checked: a JSON object of string -> distinct non-negative ints."""
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise GptlabError(f"{path}: cannot read the vocabulary ({e})") from e
    if not isinstance(vocab, dict) or not vocab:
        raise GptlabError(f"{path}: expected a non-empty JSON object of token -> id")
    owner: dict[int, str] = {}
    for token, i in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise GptlabError(f"{path}: token {token!r} has id {i!r}, not a non-negative integer")
        if i in owner:
            raise GptlabError(f"{path}: id {i} is given to both {owner[i]!r} and {token!r}")
        owner[i] = token
    return vocab


def read_merges(path: Path) -> list[tuple[int, str, str]]:
    """The merge list in priority order as (line number, left, right): each line is two token
    strings split by one space; an optional '#version' first line is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise GptlabError(f"{path}: cannot read the merges ({e})") from e
    merges = []
    for number, line in enumerate(lines, start=1):
        if line.startswith("#version") and number == 1:
            continue
        if not line.strip():
            if any(rest.strip() for rest in lines[number:]):
                raise GptlabError(f"{path}, line {number}: empty line inside the merge list")
            break
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise GptlabError(
                f"{path}, line {number}: expected two tokens separated by one space, got {line!r}"
            )
        merges.append((number, parts[0], parts[1]))
    return merges


def write_files(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """vocab.json + merges.txt in GPT-2's format (each written atomically)."""
    atomic_write_json(folder / "vocab.json", vocab)
    text = "\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in merges)]) + "\n"
    atomic_write_text(folder / "merges.txt", text)
