"""A run folder's ownership: what gptlab may write or delete there, and who is writing now.

The rule: gptlab writes into a folder only when the folder is empty, is already a gptlab run
(it holds the `.gptlab-run` mark: file names alone prove nothing), or the user said
--overwrite. Even then it deletes only the files it writes itself (`RUN_FILES`), never anything
else, and only once the new run has saved a checkpoint to take their place (until then they
wait in `.replaced`).
One training at a time holds a folder: `.lock` names its process, and a lock whose process is
gone is taken over.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.folders import RUN_LOCK as LOCK
from gptlab.folders import RUN_MARK as MARK
from gptlab.folders import FolderLock as RunLock
from gptlab.folders import check_not_inside_a_run, is_training_run
from gptlab.tokenizers import TOKENIZER_FILES

__all__ = ["LOCK", "MARK", "RunLock", "is_training_run"]  # (re-exported from gptlab.folders)
# Everything a training run writes at the top of its folder (data/ is the prepared-data cache,
# handled by the trainer's resolve_data, which deletes it only when it made it).
RUN_FILES = (
    "checkpoint",
    ".checkpoint.old",
    ".checkpoint.tmp",
    "best",
    "snapshots",
    "tb",
    "metrics.jsonl",
    "loss.png",
    "train.toml",
    "config.json",
    "model.safetensors",
    *TOKENIZER_FILES,
)
# Saved work: weights. A folder with train.toml or metrics.jsonl but no weights holds a start
# that was cut short before its first checkpoint; a new run may take its place.
RUN_EVIDENCE = ("checkpoint", ".checkpoint.old", "model.safetensors")


def holds_a_run(out: Path) -> bool:
    """True if OUT holds a run's weights (that resuming would continue, overwriting replace)."""
    return any((out / name).exists() for name in RUN_EVIDENCE)


def is_ours(out: Path) -> bool:
    """True if OUT is a gptlab run by its mark (or a training holds it now). Files named as a
    run names them (metrics.jsonl, train.toml, weights) prove nothing: they may be a user's."""
    return (out / MARK).exists() or (out / LOCK).exists()


def check_writable(out: Path, overwrite: bool) -> None:
    """Refuse a path that is a file, and a non-empty folder gptlab did not make (without
    --overwrite)."""
    if out.exists() and not out.is_dir():
        raise GptlabError(f"{out}: exists and is not a folder")
    check_not_inside_a_run(out, "train into another folder")
    if out.is_dir() and overwrite and not is_ours(out):
        clash = [name for name in RUN_FILES if (out / name).exists()]
        if clash:  # --overwrite would delete them, and they are the user's, not a run's
            raise GptlabError(
                f"{out} is not a gptlab run, yet holds {', '.join(clash)}, which a run writes "
                "(and --overwrite would replace): choose another folder"
            )
    if out.is_dir() and not overwrite and not is_ours(out) and any(out.iterdir()):
        raise GptlabError(
            f"{out}: a folder gptlab did not create, and not empty; choose an empty or new "
            "folder, or pass --overwrite to write gptlab's files into it (nothing else is touched)"
        )


def claim(out: Path) -> None:
    """Create OUT if needed (one clear line if that fails); mark() makes it a run later."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GptlabError(f"{out}: cannot write there ({e.strerror or e})") from None


def mark(out: Path) -> None:
    """Mark OUT as a gptlab run: from now on gptlab may write there without --overwrite."""
    (out / MARK).write_text("a gptlab training run; see train.toml\n", encoding="utf-8")


def clear_run(out: Path) -> None:
    """Delete the files a run wrote (RUN_FILES) and nothing else."""
    for name in RUN_FILES:
        _remove(out / name)


def _remove(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()


# A run that replaces another (--overwrite) moves the old run's files here, and deletes them
# only once it has saved its first checkpoint: a new run that fails before (a NaN, Ctrl-C
# twice, a full disk, a kill) leaves the old run as it was.
ASIDE = ".replaced"
DATA = "data"  # the run's prepared data (train/rundata.py), set aside when new data replaces it
NO_DATA = ".no-data"  # in ASIDE: the replaced run had no data/, so the new run's goes too
RESTORING = ".restoring"  # ASIDE while it moves back
CLEARED = ".cleared"  # in RESTORING: the new run's files are deleted


def set_aside(out: Path) -> None:
    """Move the previous run's files (RUN_FILES) into OUT/.replaced, to come back if the new
    run saves nothing (`restore_aside`) or go once it has (`drop_aside`)."""
    present = [name for name in RUN_FILES if (out / name).exists() or (out / name).is_symlink()]
    if not present:
        return
    staging = out / (ASIDE + ".tmp")  # whole or not at all: a kill mid-way is undone by name
    staging.mkdir(exist_ok=True)
    for name in present:
        os.replace(out / name, staging / name)
    os.replace(staging, out / ASIDE)


def restore_aside(out: Path) -> None:
    """The new run saved nothing: delete what it wrote and bring the previous run back. In
    steps that a kill can interrupt and a later call finish: .replaced is renamed .restoring
    (from then on nothing in OUT is taken for the new run's by mistake), the new run's files
    are deleted (then .restoring/.cleared says so), and the old ones move back."""
    aside, restoring = out / ASIDE, out / RESTORING
    if aside.is_dir():
        os.replace(aside, restoring)
    if not restoring.is_dir():
        return
    if not (restoring / CLEARED).exists():
        for name in RUN_FILES:
            _remove(out / name)
        if (restoring / DATA).exists() or (restoring / NO_DATA).exists():
            _remove(out / DATA)  # the new run's prepared data makes way for the old
        (restoring / CLEARED).touch()
    for item in restoring.iterdir():
        if item.name not in (CLEARED, NO_DATA):
            os.replace(item, out / item.name)
    shutil.rmtree(restoring)


def has_aside(out: Path) -> bool:
    """A run of ours (its mark) with a replaced run waiting, or half restored or set aside."""
    return (out / MARK).exists() and any(
        (out / name).is_dir() for name in (ASIDE, ASIDE + ".tmp", RESTORING)
    )


def drop_aside(out: Path) -> None:
    """The new run has saved a checkpoint: the run it replaced goes for good."""
    shutil.rmtree(out / ASIDE, ignore_errors=True)


def settle_aside(out: Path) -> None:
    """After a command that replaced a run (or was killed while doing so): if the new run has
    saved a checkpoint it stays, otherwise the previous run comes back. Killed while setting
    it aside: nothing new was written yet, so what was moved goes back; killed while
    restoring: the restoring is finished."""
    staging = out / (ASIDE + ".tmp")
    if staging.is_dir():
        for item in staging.iterdir():
            os.replace(item, out / item.name)
        staging.rmdir()
    if (out / RESTORING).is_dir():
        restore_aside(out)
    elif (out / ASIDE).is_dir():
        if any((out / name).is_dir() for name in RUN_EVIDENCE[:2]):
            drop_aside(out)
        else:
            restore_aside(out)


def settle_now(out: Path) -> None:
    """settle_aside under the run's lock (refused while another training holds the folder),
    for a command about to read the run: a resume must see the old run, not a half-replaced
    one."""
    if has_aside(out):
        with RunLock(out):
            settle_aside(out)
