"""Token files on disk: prepare them from a text source in a stream, read random windows back.

`prepare` is what `gptlab prepare` runs, with its folder rules, lock and temporary folder;
`tokenize_into` is its work alone, for a folder the caller owns (a run's OUT/.data.tmp).

A prepared data folder holds
    train.bin, val.bin   flat token ids (uint16, or uint32 when the vocabulary exceeds 65,535)
    meta.json            the header: tokenizer, token counts, dtype, source, split rule
    tokenizer files      whatever `Tokenizer.save` writes (char_vocab.json, vocab.json, ...)

The split is deterministic: documents are tokenized in order into one stream (the end-of-text id
after each document where the tokenizer has one); the last `val_fraction` of the stream is the
validation split. For one text file that is exactly "the first 90% train, the last 10% val".

Memory is bounded by the chunk size, not the corpus: text is cut into chunks of about
`chunk_bytes` (between documents, or inside a long one just after a run of letters, where no
pre-tokenizer joins across), chunks are tokenized by a pool of
processes, a bounded number at a time, and written in order as they finish.
"""

from __future__ import annotations

import os
import shutil
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gptlab.config import check_val_fraction
from gptlab.data.corpus import Document, iter_documents
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_json, read_json_object
from gptlab.folders import FolderLock, check_not_inside_a_run, is_training_run
from gptlab.tokenizers import TOKENIZER_FILES, CharTokenizer, Tokenizer

META_FILE = "meta.json"
FORMAT = "gptlab-tokens/1"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


# ----------------------------------------------------------------------------- preparing

Piece = tuple[str, bool]  # (text, this piece ends its document)


def _pieces(documents: Iterable[Document], chunk_bytes: int) -> Iterator[list[Piece]]:
    """Group documents into chunks of about chunk_bytes characters, cutting long documents
    where no token changes (`_safe_cut`)."""
    chunk: list[Piece] = []
    size = 0
    for doc in documents:
        text = doc.text
        while len(text) > chunk_bytes:
            cut = _safe_cut(text, chunk_bytes)
            if cut is None:
                break
            chunk.append((text[:cut], False))
            yield chunk
            chunk, size = [], 0
            text = text[cut:]
        chunk.append((text, True))
        size += len(text)
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _safe_cut(text: str, near: int) -> int | None:
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


_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = Tokenizer.from_pretrained(tokenizer_dir)


def _encode_chunk(chunk: list[Piece], tokenizer: Tokenizer | None = None) -> tuple[np.ndarray, int]:
    tok = tokenizer or _WORKER_TOKENIZER
    dtype = token_dtype(tok.vocab_size)
    parts = []
    docs = 0
    for text, ends in chunk:
        ids = tok.encode_array(text) if isinstance(tok, CharTokenizer) else tok.encode(text)
        parts.append(np.asarray(ids, dtype=dtype))
        if ends:
            docs += 1
            if tok.eot_id is not None:
                parts.append(np.array([tok.eot_id], dtype=dtype))
    return (np.concatenate(parts) if parts else np.zeros(0, dtype)), docs


def build_tokenizer(name: str, documents: Iterable[Document]) -> Tokenizer:
    """ "char" (vocabulary from the corpus, one streaming pass), "gpt2", or a tokenizer folder."""
    if name == "char":
        chars: set[str] = set()
        for doc in documents:
            chars.update(doc.text)
        if not chars:
            raise GptlabError("the corpus is empty")
        return CharTokenizer(chars)
    return Tokenizer.from_pretrained(name)


def prepare(
    source: str | list[str],
    out_dir: str | os.PathLike,
    tokenizer: str | Tokenizer = "char",
    val_fraction: float = 0.1,
    *,
    overwrite: bool = False,
    chunk_bytes: int = 1 << 22,
    workers: int | None = None,
    progress: bool = True,
) -> PreparedData:
    """Tokenize a source ("shakespeare", text files or folders, "hf:NAME") into `out_dir`, as
    `gptlab prepare` does: OUT must be new, empty, or (with overwrite) prepared data; one
    prepare at a time writes it (a lock beside it); the data is made in a folder beside OUT
    and moved in at the end, so a failure or Ctrl-C leaves OUT as it was."""
    _check_settings(val_fraction, workers)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GptlabError(f"{out}: exists and is not a folder")
    if out.is_dir() and is_training_run(out):
        raise GptlabError(f"{out} is a training run's folder; prepare data into another one")
    check_not_inside_a_run(out, "prepare data elsewhere")
    place = out.absolute()  # (named even for --out .)
    made = [p for p in (place, *place.parents) if not p.exists()]  # innermost first
    try:
        place.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GptlabError(f"{out}: cannot write there ({e.strerror or e})") from None
    lock = FolderLock(out, path=place.parent / f".{place.name}.lock", what="gptlab prepare")
    tmp = place.parent / f".{place.name}.prepare.tmp"
    began = False  # past the checks that OUT is ours to write (made under the lock)
    try:
        with lock:
            _check_prepare_out(out, overwrite)
            began = True
            if tmp.exists():  # left by a prepare that was killed (the lock says none runs now)
                shutil.rmtree(tmp)
            try:
                tokenize_into(source, tmp, tokenizer, val_fraction, chunk_bytes, workers, progress)
                _move_in(tmp, out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        if began:  # failed at its work (a refusal changed nothing): what it made goes again
            _remove_made(place, made)
        raise
    return PreparedData(out)


def _remove_made(out: Path, made: list[Path]) -> None:
    """Undo the folders a failed prepare created, innermost first: OUT with what is in it, if
    it made OUT (the lock kept every other prepare out of it), then each parent only while it
    is empty (a prepare into a sibling folder may have started there meanwhile)."""
    if out in made:
        shutil.rmtree(out, ignore_errors=True)
    for folder in made:
        if folder == out:
            continue
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty: the rest is someone else's too
            break


def prepared_files() -> tuple[str, ...]:
    """The names a prepared data folder may hold (tokenizer files of every kind included)."""
    return (META_FILE, "train.bin", "val.bin", *TOKENIZER_FILES)


def is_prepared_data(folder: Path) -> bool:
    """True if `folder` holds prepared data: its meta.json, written last, says it is whole."""
    return (folder / META_FILE).is_file()


def _check_settings(val_fraction: float, workers: int | None) -> None:
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise GptlabError(f"workers must be at least 1 (or None: every core), got {workers}")
    check_val_fraction(val_fraction)


MOVING = ".prepare-moving"  # in OUT while new prepared data replaces old: the folder is ours


def _check_prepare_out(out: Path, overwrite: bool) -> None:
    """OUT is new, empty, or (with overwrite) prepared data, or data a killed prepare was
    moving in. The caller holds OUT's lock, so what this sees no other prepare can change
    before the move."""
    if not (out.is_dir() and any(out.iterdir())):
        return
    prepared = is_prepared_data(out) or (out / MOVING).exists()
    if not overwrite:
        what = "prepared data" if prepared else "files"
        raise GptlabError(f"{out} already holds {what}; pass --overwrite to replace them")
    clash = [n for n in prepared_files() if (out / n).exists()]
    if clash and not prepared:  # not ours: overwrite must not replace a user's files
        raise GptlabError(
            f"{out} holds {', '.join(clash)} but no prepared data; --overwrite replaces "
            "prepared data only: choose another folder"
        )


def _move_in(tmp: Path, out: Path) -> None:
    """Prepared data in tmp replaces the prepared data in OUT (the old tokenizer's files too);
    meta.json moves last, so OUT is whole or says it is not."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MOVING).touch()  # a kill from here on leaves a folder the next prepare may replace
    for name in prepared_files():
        (out / name).unlink(missing_ok=True)
    for path in tmp.iterdir():
        if path.name != META_FILE:
            os.replace(path, out / path.name)
    os.replace(tmp / META_FILE, out / META_FILE)
    (out / MOVING).unlink()


def tokenize_into(
    source: str | list[str],
    folder: str | os.PathLike,
    tokenizer: str | Tokenizer = "char",
    val_fraction: float = 0.1,
    chunk_bytes: int = 1 << 22,
    workers: int | None = None,
    progress: bool = True,
) -> PreparedData:
    """`prepare`'s work, written straight into `folder` with no checks and no lock: for a
    folder the caller owns and discards on failure (a run's OUT/.data.tmp, prepare's own)."""
    from tqdm import tqdm

    _check_settings(val_fraction, workers)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = build_tokenizer(tokenizer, iter_documents(source))
    tokenizer.save(out)
    dtype = token_dtype(tokenizer.vocab_size)
    workers = workers or os.cpu_count() or 1

    tmp = out / ".tokens.tmp"
    # disable=None: drawn on a terminal only, never into a log
    bar = tqdm(
        desc="prepare",
        unit="char",
        unit_scale=True,
        disable=None if progress else True,
        leave=False,
    )
    try:
        with open(tmp, "wb") as f:
            total, docs, chars = _encode_into(f, source, tokenizer, out, chunk_bytes, workers, bar)
        n_train, n_val = _split(tmp, out, dtype, total, val_fraction, _describe(source))
    finally:
        bar.close()
        for leftover in (tmp, out / "val.bin.tmp"):
            if leftover.exists():
                leftover.unlink()
    meta = {
        "format": FORMAT,
        "source": _describe(source),
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "train_tokens": n_train,
        "val_tokens": n_val,
        "documents": docs,
        "characters": chars,
        "val_fraction": val_fraction,
        "split": "the last val_fraction of the token stream (documents in order) is val",
    }
    atomic_write_json(out / META_FILE, meta)  # written last: its presence means complete
    return PreparedData(out)


def _encode_into(
    f, source, tokenizer: Tokenizer, out: Path, chunk_bytes: int, workers: int, bar
) -> tuple[int, int, int]:
    """Every piece of the source's documents, encoded in order (by a pool of `workers`
    processes, at most 2 x workers pieces in flight) and appended to the open file f ->
    (tokens, documents, characters)."""
    total = docs = chars = 0

    def write(ids: np.ndarray, n_docs: int, chunk) -> None:
        nonlocal total, docs, chars
        n_chars = sum(len(t) for t, _ in chunk)
        f.write(ids.tobytes())
        total, docs, chars = total + len(ids), docs + n_docs, chars + n_chars
        bar.update(n_chars)

    chunks = _pieces(iter_documents(source), chunk_bytes)
    first, second = next(chunks, None), next(chunks, None)
    if second is None or workers == 1:  # small corpus: no pool to start
        for chunk in filter(None, [first, second, *chunks]):
            write(*_encode_chunk(chunk, tokenizer), chunk)
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(str(out),)) as pool:
            pending: deque = deque((pool.submit(_encode_chunk, c), c) for c in (first, second))
            for chunk in chunks:
                while len(pending) >= 2 * workers:  # bounded: memory ~ chunks in flight
                    future, done = pending.popleft()
                    write(*future.result(), done)
                pending.append((pool.submit(_encode_chunk, chunk), chunk))
            while pending:
                future, done = pending.popleft()
                write(*future.result(), done)
    f.flush()
    os.fsync(f.fileno())
    return total, docs, chars


def _split(
    tmp: Path, out: Path, dtype: np.dtype, total: int, val_fraction: float, source: str
) -> tuple[int, int]:
    """The token stream in tmp -> out/train.bin (its first part) and out/val.bin (the last
    val_fraction, as nanoGPT: int(n * 0.9) train tokens) -> (train, val) token counts."""
    if total == 0:
        raise GptlabError(f"{source}: the corpus is empty")
    n_train = min(int(total * (1 - val_fraction)), total - 1)
    if n_train < 1:
        raise GptlabError(
            f"{source}: val_fraction={val_fraction} leaves no training tokens of {total}"
        )
    tokens = np.memmap(tmp, dtype=dtype, mode="r")
    with open(out / "val.bin.tmp", "wb") as f:
        f.write(tokens[n_train:].tobytes())
    del tokens
    os.truncate(tmp, n_train * dtype.itemsize)
    os.replace(out / "val.bin.tmp", out / "val.bin")
    os.replace(tmp, out / "train.bin")
    return n_train, total - n_train


def _describe(source: str | list[str]) -> str:
    return source if isinstance(source, str) else " ".join(map(str, source))


# ----------------------------------------------------------------------------- reading


@dataclass
class PreparedData:
    """A prepared data folder: memory-mapped splits and random windows from them."""

    directory: Path

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        path = self.directory / META_FILE
        try:
            self.meta = read_json_object(path)
        except FileNotFoundError:
            raise GptlabError(f"{self.directory}: not prepared data (no {META_FILE})") from None
        if self.meta.get("format") != FORMAT:
            raise GptlabError(f"{path}: unknown format {self.meta.get('format')!r}")
        whole = ("vocab_size", "train_tokens", "val_tokens")
        if not all(isinstance(self.meta.get(k), int) and self.meta[k] > 0 for k in whole) or (
            self.meta.get("dtype") not in ("uint16", "uint32")
        ):
            raise GptlabError(f"{path}: damaged ({', '.join(whole)}, dtype); prepare again")
        dtype = np.dtype(self.meta["dtype"])
        self.splits: dict[str, np.ndarray] = {}
        for split in ("train", "val"):
            file = self.directory / f"{split}.bin"
            expected = self.meta[f"{split}_tokens"]
            if not file.is_file() or file.stat().st_size != expected * dtype.itemsize:
                raise GptlabError(f"{file}: missing or not {expected} tokens long; prepare again")
            self.splits[split] = np.memmap(file, dtype=dtype, mode="r")

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the tokens were made with; it must have meta.json's vocabulary."""
        tok = Tokenizer.from_pretrained(self.directory)
        if tok.vocab_size != self.vocab_size:
            raise GptlabError(
                f"{self.directory}: meta.json says {self.vocab_size} ids, the tokenizer files "
                f"{tok.vocab_size}; prepare again"
            )
        return tok

    def check_block_size(self, block_size: int) -> None:
        for split, data in self.splits.items():
            if len(data) < block_size + 1:
                raise GptlabError(
                    f"{self.directory}: the {split} split has {len(data)} tokens, fewer than "
                    f"block_size + 1 = {block_size + 1}; use more text or a smaller block_size"
                )

    def window_starts(self, split: str, n: int, block_size: int, generator: torch.Generator):
        """n random window starts in a split, drawn from `generator` (B,) int64."""
        high = len(self.splits[split]) - block_size
        return torch.randint(high, (n,), generator=generator)

    def windows(self, split: str, starts: torch.Tensor, block_size: int):
        """Inputs x and targets y (x shifted left by one), each (len(starts), block_size)."""
        data = self.splits[split]
        rows = np.stack([data[i : i + block_size + 1] for i in starts.tolist()]).astype(np.int64)
        batch = torch.from_numpy(rows)
        return batch[:, :-1], batch[:, 1:]
