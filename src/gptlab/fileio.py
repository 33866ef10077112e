"""Atomic file writes: write beside the target, fsync, then rename over it.

A reader never sees half a file, and a crash mid-write leaves the old file as it was.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` to fill a temporary file in the target's folder, then move it
    over `path`. On any error the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_beside(path)
    mode = os.stat(tmp).st_mode & 0o777
    try:
        write(tmp)
        if os.stat(tmp).st_mode & 0o777 != mode:  # a writer that replaced it (safetensors
            os.chmod(tmp, mode)  # writes its own temporary file: 0600)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if os.path.lexists(tmp):  # tmp and path were one file (a hard link): rename did nothing
            os.remove(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json_object(path: str | os.PathLike) -> dict:
    """A UTF-8 JSON file that must hold an object -> that dict. Text that is not JSON (or not
    UTF-8) and JSON that is not an object are one GptlabError naming the file; a missing or
    unreadable file is the OSError it is (callers say what its absence means)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise GptlabError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise GptlabError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _new_file_beside(path: Path) -> str:
    """Create an empty file of a new name in `path`'s folder with the permissions open() gives
    (0666 less the umask, which the kernel applies: reading it would mean setting it, a race
    with the process's other threads; mkstemp would make it 0600)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return str(tmp)
    raise FileExistsError(f"{path.parent}: no free temporary name after 100 tries")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for each non-blank line of a .jsonl (or .jsonl.gz) file, a
    line at a time; a missing file, bytes that are not UTF-8 or a bad line is a GptlabError
    naming the file and the line."""
    import gzip

    path = Path(path)
    if path.is_dir():
        raise GptlabError(f"{path}: is a folder, not a JSONL file")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise GptlabError(f"{path}, line {number}: not valid JSON ({e})") from None
                if not isinstance(row, dict):
                    raise GptlabError(f"{path}, line {number}: expected a JSON object")
                yield number, row
    except FileNotFoundError:
        raise GptlabError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise GptlabError(f"{path}: not UTF-8 text ({e})") from None
    except (OSError, EOFError) as e:  # gzip's errors, a truncated file
        raise GptlabError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
