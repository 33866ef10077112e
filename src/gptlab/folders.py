"""Whose folder is this, and who writes it now: the marks and the lock every command reads.

A training run's folder carries `RUN_MARK` (train/runfolder.py says what a run may write
there); a prepared data folder is known by its meta.json (data/shards.py). One writer at a
time holds a folder through a `FolderLock`, a file naming its process; a lock whose process
is gone is taken over.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from gptlab.errors import GptlabError

RUN_MARK = ".gptlab-run"
RUN_LOCK = ".lock"  # inside a run's folder, held by the training that writes it


def is_training_run(folder: Path) -> bool:
    """True if `folder` is a training's folder (not merely a folder of exported weights)."""
    marks = (RUN_MARK, RUN_LOCK, "train.toml", "metrics.jsonl", "checkpoint", ".checkpoint.old")
    return any((folder / name).exists() for name in marks)


def check_not_inside_a_run(folder: Path, advice: str = "write elsewhere") -> None:
    """Refuse RUN/sub and RUN/sub/sub: a folder inside a training run's (RUN/checkpoint,
    RUN/data, RUN/snapshots/step-N) belongs to that run. Known by the run's mark only: a
    user's project folder may well hold a train.toml (or a .lock) of its own."""
    for above in folder.absolute().parents[:2]:
        if (above / RUN_MARK).exists():
            raise GptlabError(f"{folder} is inside the training run {above}; {advice}")


class FolderLock:
    """A lock file holding this process's pid while it writes `folder`. A second writer is
    refused in one line naming `what` holds it; a lock left by a process that no longer runs
    is taken over. path: the lock file (default folder/.lock; `prepare` keeps one beside its
    folder, which may not exist yet)."""

    def __init__(self, folder: Path, path: Path | None = None, what: str = "training") -> None:
        self.folder, self.path, self.what = folder, path or folder / RUN_LOCK, what
        self.held = False

    def __enter__(self) -> FolderLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _read_pid(self.path)
                if pid is not None and _alive(pid):
                    raise GptlabError(
                        f"{self.folder}: another {self.what} (pid {pid}) is writing this "
                        f"folder; wait for it, or remove {self.path} if that is wrong"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return self
        raise GptlabError(f"{self.path}: cannot take the lock")

    def __exit__(self, *exc) -> None:
        if self.held and _read_pid(self.path) == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM  # exists, owned by someone else
    return True
