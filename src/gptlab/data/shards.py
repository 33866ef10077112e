"""Token files on disk: prepare them from a text source in a stream, read random windows back.

`prepare` is what `gptlab prepare` runs, with its folder rules, lock and temporary folder;
`tokenize_into` is its work alone, for a folder the caller owns (a run's OUT/.data.tmp).

A prepared data folder holds
    tokens-000000.bin, ...  the token stream (uint16, or uint32 when the vocabulary exceeds
                            65,535), in shards of at most `shard_tokens` ids (100 M by default)
    meta.json               the header: the shards and their token counts, tokenizer, dtype,
                            source, split rule
    tokenizer files         whatever `Tokenizer.save` writes (char_vocab.json, vocab.json, ...)
(Folders prepared before shards, "gptlab-tokens/1", hold train.bin and val.bin instead; they are
read as before.)

The split is deterministic: documents are tokenized in order into one stream (the end-of-text id
after each document where the tokenizer has one); the last `val_fraction` of the stream is the
validation split. For one text file that is exactly "the first 90% train, the last 10% val".
Training reads the shards as one stream (memory-mapped), so a window may span two shards.

Memory is bounded by the chunk size, not the corpus: files are read a block at a time and text
is cut into chunks of about `chunk_bytes` (between documents, or inside a long one just after a
run of letters, where no pre-tokenizer joins across; `corpus.safe_cut`); chunks are tokenized
by a pool of processes, a bounded number at a time, and appended in order as they finish.

A prepare that is stopped (Ctrl-C, a kill, a full disk) keeps its temporary folder with a
progress record written after every chunk; the same command continues from there, and the
result equals an uninterrupted prepare's byte for byte.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path

import numpy as np
import torch

from gptlab.config import check_val_fraction
from gptlab.data.corpus import BUILTIN, Piece, iter_pieces, text_files
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_json, read_json_object
from gptlab.folders import FolderLock, check_not_inside_a_run, is_training_run
from gptlab.tokenizers import TOKENIZER_FILES, CharTokenizer, Tokenizer

META_FILE = "meta.json"
FORMAT = "gptlab-tokens/2"  # /1: train.bin + val.bin; /2: the stream in shards
PROGRESS_FILE = "progress.json"  # in a prepare's temporary folder: how far it got
SHARD_TOKENS = 100_000_000
_SHARD = re.compile(r"tokens-\d{6}\.bin")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def shard_name(i: int) -> str:
    return f"tokens-{i:06d}.bin"


# ----------------------------------------------------------------------------- preparing


def _chunks(pieces: Iterable[Piece], chunk_bytes: int) -> Iterator[list[Piece]]:
    """Pieces (each at most about chunk_bytes characters, `corpus.iter_pieces`) grouped into
    chunks of about chunk_bytes characters."""
    chunk: list[Piece] = []
    size = 0
    for text, ends in pieces:
        chunk.append((text, ends))
        size += len(text)
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER_TOKENIZER
    # Ctrl-C reaches the whole process group: the parent stops the pool and says one line,
    # a worker finishes its chunk instead of printing a KeyboardInterrupt traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_TOKENIZER = Tokenizer.from_pretrained(tokenizer_dir)


def _encode_chunk(chunk: list[Piece], tokenizer: Tokenizer | None = None) -> tuple[np.ndarray, int]:
    tok = tokenizer or _WORKER_TOKENIZER
    dtype = token_dtype(tok.vocab_size)
    parts = []
    docs = 0
    for text, ends in chunk:
        encode = getattr(tok, "encode_array", None)  # an array straight from the encoder
        ids = encode(text) if encode is not None else tok.encode(text)
        parts.append(np.asarray(ids, dtype=dtype))
        if ends:
            docs += 1
            if tok.eot_id is not None:
                parts.append(np.array([tok.eot_id], dtype=dtype))
    return (np.concatenate(parts) if parts else np.zeros(0, dtype)), docs


def build_tokenizer(name: str, pieces: Iterable[Piece]) -> Tokenizer:
    """ "char" (vocabulary from the corpus, one streaming pass), "gpt2", or a tokenizer folder."""
    if name == "char":
        chars: set[str] = set()
        for text, _ in pieces:
            chars.update(text)
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
    column: str = "text",
    shard_tokens: int = SHARD_TOKENS,
) -> PreparedData:
    """Tokenize a source ("shakespeare", text/JSONL/Parquet files or folders, "hf:NAME") into
    `out_dir`, as `gptlab prepare` does: OUT must be new, empty, or (with overwrite) prepared
    data; one prepare at a time writes it (a lock beside it); the data is made in a folder
    beside OUT and moved in at the end, so a failure leaves OUT as it was. A prepare stopped
    by Ctrl-C, a kill or a full disk keeps that folder, and the same call continues it."""
    _check_settings(val_fraction, workers, shard_tokens)
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
            keep = False  # a stopped prepare keeps its work for the next one
            try:
                tokenize_into(
                    source,
                    tmp,
                    tokenizer,
                    val_fraction,
                    chunk_bytes,
                    workers,
                    progress,
                    column=column,
                    shard_tokens=shard_tokens,
                    resume=True,
                )
                _move_in(tmp, out)
            except (KeyboardInterrupt, OSError):
                keep = (tmp / PROGRESS_FILE).is_file()
                raise
            finally:
                if not keep:
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


def is_prepared_file(name: str) -> bool:
    """A name prepare writes in a data folder (shards, tokenizer files of every kind, meta)."""
    return (
        name in (META_FILE, "train.bin", "val.bin", *TOKENIZER_FILES)
        or _SHARD.fullmatch(name) is not None
    )


def is_prepared_data(folder: Path) -> bool:
    """True if `folder` holds prepared data: its meta.json, written last, says it is whole."""
    return (folder / META_FILE).is_file()


def _check_settings(val_fraction: float, workers: int | None, shard_tokens: int) -> None:
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise GptlabError(f"workers must be at least 1 (or None: every core), got {workers}")
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise GptlabError(f"shard_tokens must be at least 1, got {shard_tokens!r}")
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
    clash = sorted(p.name for p in out.iterdir() if is_prepared_file(p.name))
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
    for path in out.iterdir():
        if is_prepared_file(path.name):
            path.unlink()
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
    *,
    column: str = "text",
    shard_tokens: int = SHARD_TOKENS,
    resume: bool = False,
) -> PreparedData:
    """`prepare`'s work, written straight into `folder` with no checks and no lock: for a
    folder the caller owns and discards on failure (a run's OUT/.data.tmp, prepare's own).
    resume: where `folder` holds the progress of a prepare of the same source and settings
    (the same files, unchanged), continue it; otherwise the prepared files there are
    replaced."""
    from tqdm import tqdm

    _check_settings(val_fraction, workers, shard_tokens)
    out = Path(folder)
    settings = _settings(source, tokenizer, val_fraction, chunk_bytes, column, shard_tokens)
    done = _progress(out, settings) if resume else None
    if done is None:
        out.mkdir(parents=True, exist_ok=True)
        for path in out.iterdir():  # a stopped prepare's files, of other settings: not kept
            if is_prepared_file(path.name) or path.name == PROGRESS_FILE:
                path.unlink()
        if not isinstance(tokenizer, Tokenizer):
            tokenizer = build_tokenizer(tokenizer, iter_pieces(source, chunk_bytes, column))
        tokenizer.save(out)
        done = {"settings": settings, "chunks": 0, "documents": 0, "characters": 0}
        done.update(bytes=0, shards=[])
        atomic_write_json(out / PROGRESS_FILE, done)
    else:
        tokenizer = Tokenizer.from_pretrained(out)  # the one the tokens so far were made with
        if progress:
            print(
                f"gptlab: continuing the prepare stopped after {sum(done['shards']):,} tokens",
                flush=True,
            )
    dtype = token_dtype(tokenizer.vocab_size)
    # disable=None: drawn on a terminal only, never into a log
    bar = tqdm(
        desc="prepare",
        unit="B",
        unit_scale=True,
        disable=None if progress else True,
        leave=False,
        total=_input_bytes(source),
    )
    bar.update(done["bytes"])
    try:
        with _ShardWriter(out, dtype, shard_tokens, done["shards"]) as writer:
            _encode_into(writer, out, source, tokenizer, chunk_bytes, workers, bar, done, column)
    finally:
        bar.close()
    total = sum(done["shards"])
    n_train, n_val = _split_sizes(total, val_fraction, _describe(source))
    meta = {
        "format": FORMAT,
        "source": _describe(source),
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "train_tokens": n_train,
        "val_tokens": n_val,
        "shards": [[shard_name(i), n] for i, n in enumerate(done["shards"])],
        "documents": done["documents"],
        "characters": done["characters"],
        "val_fraction": val_fraction,
        "split": "the last val_fraction of the token stream (documents in order) is val",
    }
    (out / PROGRESS_FILE).unlink()
    atomic_write_json(out / META_FILE, meta)  # written last: its presence means complete
    return PreparedData(out)


def _settings(source, tokenizer, val_fraction, chunk_bytes, column, shard_tokens) -> dict:
    """What decides the tokens a prepare writes: a stopped prepare continues only under the
    same (the input files by name, size and time of change)."""
    if isinstance(tokenizer, Tokenizer):
        tokenizer = f"{tokenizer.kind}, {tokenizer.vocab_size} ids, eot {tokenizer.eot_id}"
    inputs = []
    for path in _input_files(source):
        stat = path.stat()
        inputs.append([str(path), stat.st_size, stat.st_mtime_ns])
    return {
        "source": _describe(source),
        "tokenizer": str(tokenizer),
        "val_fraction": val_fraction,
        "chunk_bytes": chunk_bytes,
        "column": column,
        "shard_tokens": shard_tokens,
        "inputs": inputs,
    }


def _progress(out: Path, settings: dict) -> dict | None:
    """The progress record of a stopped prepare in `out`, if it prepared the same (else None:
    start afresh)."""
    try:
        done = read_json_object(out / PROGRESS_FILE)
    except (OSError, GptlabError):
        return None
    shards = done.get("shards")
    counts = ("chunks", "documents", "characters", "bytes")
    whole = all(isinstance(done.get(k), int) for k in counts)
    if done.get("settings") != settings or not whole or not isinstance(shards, list):
        return None
    if not all(isinstance(n, int) and n >= 0 for n in shards):
        return None
    if not all((out / shard_name(i)).is_file() for i in range(len(shards))):
        return None
    return done


def _input_bytes(source) -> int | None:
    """The size of the input text files, for the progress bar's total (None: not known, e.g.
    rows of JSONL or Parquet, whose files hold more than their text)."""
    try:
        files = _input_files(source)
    except GptlabError:
        return None
    if not files or not all(p.suffix.lower() in (".txt", ".md") for p in files):
        return None
    return sum(p.stat().st_size for p in files)


def _input_files(source) -> list:
    """The files a source reads ([] for the built-in corpus and hf: datasets)."""
    if not isinstance(source, str) and len(source) == 1:  # `--input X` comes as a list
        source = str(source[0])
    if isinstance(source, str) and (source in BUILTIN or source.startswith("hf:")):
        return []
    return text_files([source] if isinstance(source, str) else source)


class _ShardWriter:
    """Appends ids to the token stream, a shard of at most `size` tokens at a time; `counts`:
    the tokens already in each shard (a continued prepare), later bytes cut off."""

    def __init__(self, folder: Path, dtype: np.dtype, size: int, counts: list[int]) -> None:
        self.folder, self.dtype, self.size, self.counts = folder, dtype, size, counts
        for path in folder.glob("tokens-*.bin"):
            if not _SHARD.fullmatch(path.name) or int(path.name[7:13]) >= len(counts):
                path.unlink()
        self.file = None
        if counts:
            self.file = open(folder / shard_name(len(counts) - 1), "r+b")  # noqa: SIM115
            self.file.truncate(counts[-1] * dtype.itemsize)
            self.file.seek(0, os.SEEK_END)

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.file is None or self.counts[-1] == self.size:
                self._next()
            room = self.size - self.counts[-1]
            self.file.write(ids[:room].tobytes())
            self.counts[-1] += len(ids[:room])
            ids = ids[room:]

    def _next(self) -> None:
        if self.file is not None:
            self.sync()
            self.file.close()
        self.counts.append(0)
        self.file = open(self.folder / shard_name(len(self.counts) - 1), "wb")  # noqa: SIM115

    def sync(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()


def _encode_into(
    writer: _ShardWriter, out: Path, source, tokenizer, chunk_bytes, workers, bar, done, column
) -> None:
    """Every chunk of the source after the `done["chunks"]` already written, encoded in order
    (by a pool of `workers` processes, at most 2 x workers chunks in flight) and appended; the
    progress record is written after each (the shards synced first)."""
    workers = workers or os.cpu_count() or 1

    def write(ids: np.ndarray, n_docs: int, chunk) -> None:
        n_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t, _ in chunk)
        writer.write(ids)
        writer.sync()
        done["chunks"] += 1
        done["documents"] += n_docs
        done["characters"] += sum(len(t) for t, _ in chunk)
        done["bytes"] += n_bytes
        atomic_write_json(out / PROGRESS_FILE, done)
        bar.update(n_bytes)

    chunks = islice(
        _chunks(iter_pieces(source, chunk_bytes, column), chunk_bytes), done["chunks"], None
    )
    first, second = next(chunks, None), next(chunks, None)
    if second is None or workers == 1:  # small corpus: no pool to start
        for chunk in filter(None, chain([first, second], chunks)):  # (a list would hold all)
            write(*_encode_chunk(chunk, tokenizer), chunk)
        return
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(str(out),)) as pool:
        pending: deque = deque((pool.submit(_encode_chunk, c), c) for c in (first, second))
        for chunk in chunks:
            while len(pending) >= 2 * workers:  # bounded: memory ~ chunks in flight
                future, finished = pending.popleft()
                write(*future.result(), finished)
            pending.append((pool.submit(_encode_chunk, chunk), chunk))
        while pending:
            future, finished = pending.popleft()
            write(*future.result(), finished)


def _split_sizes(total: int, val_fraction: float, source: str) -> tuple[int, int]:
    """(train, val) token counts: the last val_fraction of the stream is val (as nanoGPT:
    int(n * 0.9) train tokens)."""
    if total == 0:
        raise GptlabError(f"{source}: the corpus is empty")
    n_train = min(int(total * (1 - val_fraction)), total - 1)
    if n_train < 1:
        raise GptlabError(
            f"{source}: val_fraction={val_fraction} leaves no training tokens of {total}"
        )
    return n_train, total - n_train


def _describe(source: str | list[str]) -> str:
    return source if isinstance(source, str) else " ".join(map(str, source))


# ----------------------------------------------------------------------------- reading


class TokenStream:
    """Shards (memory-mapped arrays) read as one array: len() and [a:b] slices (a window
    that spans two shards is joined). `span(a, b)` is the part [a, b) as a stream of its own."""

    def __init__(self, parts: list[np.ndarray], start: int = 0, stop: int | None = None) -> None:
        self.parts = parts
        self.ends = np.cumsum([len(p) for p in parts]).tolist()
        self.start = start
        self.stop = self.ends[-1] if stop is None else stop

    def __len__(self) -> int:
        return self.stop - self.start

    def span(self, start: int, stop: int) -> TokenStream:
        return TokenStream(self.parts, self.start + start, self.start + stop)

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("a TokenStream takes [a:b] slices")
        a, b, _ = index.indices(len(self))
        a, b = a + self.start, max(a, b) + self.start
        out, begin = [], 0
        for part, end in zip(self.parts, self.ends, strict=True):
            if a < end and b > begin:
                out.append(part[max(a - begin, 0) : min(b, end) - begin])
            begin = end
        if len(out) == 1:
            return out[0]
        return np.concatenate(out) if out else self.parts[0][:0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def tolist(self) -> list[int]:
        return self[:].tolist()


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
        form = self.meta.get("format")
        if form not in (FORMAT, "gptlab-tokens/1"):
            raise GptlabError(f"{path}: unknown format {form!r}")
        whole = ("vocab_size", "train_tokens", "val_tokens")
        if not all(isinstance(self.meta.get(k), int) and self.meta[k] > 0 for k in whole) or (
            self.meta.get("dtype") not in ("uint16", "uint32")
        ):
            raise GptlabError(f"{path}: damaged ({', '.join(whole)}, dtype); prepare again")
        dtype = np.dtype(self.meta["dtype"])
        n_train, n_val = self.meta["train_tokens"], self.meta["val_tokens"]
        if form == FORMAT:  # the stream in shards; train is its first n_train tokens
            stream = TokenStream([self._file(f, n, dtype) for f, n in self._shards(path)])
            if len(stream) != n_train + n_val:
                raise GptlabError(
                    f"{path}: the shards hold {len(stream)} tokens, not "
                    f"{n_train} + {n_val}; prepare again"
                )
            self.splits = {
                "train": stream.span(0, n_train),
                "val": stream.span(n_train, n_train + n_val),
            }
        else:  # gptlab-tokens/1: a file per split
            self.splits = {
                split: self._file(f"{split}.bin", n, dtype)
                for split, n in (("train", n_train), ("val", n_val))
            }

    def _shards(self, path: Path) -> list[tuple[str, int]]:
        shards = self.meta.get("shards")
        ok = (
            isinstance(shards, list)
            and shards
            and all(
                isinstance(x, list)
                and len(x) == 2
                and isinstance(x[0], str)
                and _SHARD.fullmatch(x[0])
                and isinstance(x[1], int)
                and x[1] > 0
                for x in shards
            )
        )
        if not ok:
            raise GptlabError(f"{path}: damaged (shards); prepare again")
        return [(name, n) for name, n in shards]

    def _file(self, name: str, expected: int, dtype: np.dtype) -> np.memmap:
        file = self.directory / name
        if not file.is_file() or file.stat().st_size != expected * dtype.itemsize:
            raise GptlabError(f"{file}: missing or not {expected} tokens long; prepare again")
        return np.memmap(file, dtype=dtype, mode="r")

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
