"""Checkpoints that resume exactly, written so that a crash never leaves a broken one.

OUT/checkpoint/ holds everything a resumed run needs:
    config.json, model.safetensors   the weights (a model folder like any other)
    trainer.pt                       optimizer state, RNG states, data-generator state
    state.json                       step, tokens, best val loss, elapsed seconds (readable)
It is written as a whole into OUT/.checkpoint.tmp and then swapped in by renames, so the
previous checkpoint stays intact until the new one is complete. The run folder's own
model.safetensors and config.json (what `gptlab sample OUT` reads) are hard links to the
checkpoint's, replaced atomically.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from gptlab.errors import GptlabError, first_line
from gptlab.fileio import atomic_write, atomic_write_json
from gptlab.model import GPT
from gptlab.train import faults
from gptlab.train.sharding import OPTIMIZER_DIR

CHECKPOINT_DIR = "checkpoint"
TMP_DIR = ".checkpoint.tmp"  # the next checkpoint, while it is written
OLD_DIR = ".checkpoint.old"  # the previous checkpoint, while a new one is swapped in
BEST_DIR = "best"
SNAPSHOT_DIR = "snapshots"  # snapshots=true: OUT/snapshots/step-000250/, a model folder each


def begin(out: Path) -> Path:
    """An empty OUT/.checkpoint.tmp for the next checkpoint (after undoing a cut swap)."""
    tmp = out / TMP_DIR
    _undo_cut_swap(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def save(
    out: Path,
    model: GPT,
    trainer_state: dict[str, Any],
    state: dict[str, Any],
    tokenizer=None,
    begun: bool = False,
) -> None:
    """Write the checkpoint whole into OUT/.checkpoint.tmp, then swap it in: checkpoint/ ->
    .checkpoint.old/, .checkpoint.tmp/ -> checkpoint/, then drop the old one. At every moment
    one complete checkpoint exists (checkpoint/, or .checkpoint.old/ mid-swap). A failed write
    (a full disk, say) is one line and leaves the previous checkpoint as it was. begun: the
    folder was made by `begin` and already holds parts (fsdp's sharded optimizer state)."""
    tmp, final, old = out / TMP_DIR, out / CHECKPOINT_DIR, out / OLD_DIR
    if not begun:
        begin(out)
    try:
        model.save_pretrained(tmp)
        faults.point("weights-written")
        atomic_write(tmp / "trainer.pt", lambda path: torch.save(trainer_state, path))
        atomic_write_json(tmp / "state.json", state)
    except (OSError, RuntimeError, GptlabError) as e:  # a full disk: torch.save says it with
        shutil.rmtree(tmp, ignore_errors=True)  # a RuntimeError ("enforce fail at ...")
        why = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise GptlabError(
            f"{out}: could not write the checkpoint at step {state.get('step')} "
            f"({why}); the previous checkpoint is intact"
        ) from None
    faults.point("checkpoint-written")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    faults.point("old-moved")
    os.replace(tmp, final)
    faults.point("new-moved")
    if old.exists():
        shutil.rmtree(old)
    for name in ("model.safetensors", "config.json"):
        _link_into(final / name, out / name)
    if tokenizer is not None:
        tokenizer.save(out)
    faults.point("linked")


def finish_interrupted_save(out: Path, state: dict[str, Any], tokenizer=None) -> None:
    """On resume: complete what a save killed after its swap may have left undone. The run
    folder's model.safetensors and config.json are linked to the checkpoint again (a run
    killed after the swap of its final checkpoint would otherwise keep the previous weights
    there, since a finished run saves nothing more), and best/ is refreshed when the
    checkpoint is the best (state.json says so before best/ is copied)."""
    _undo_cut_swap(out)
    for name in ("model.safetensors", "config.json"):
        _link_into(out / CHECKPOINT_DIR / name, out / name)
    if tokenizer is not None:
        tokenizer.save(out)
    best, last = state.get("best_val_loss"), state.get("last_val_loss")
    if best is not None and best == last:
        save_best(out, tokenizer)


def save_best(out: Path, tokenizer=None) -> None:
    """Copy the current checkpoint's weights to OUT/best (a model folder of its own: a copy,
    not a link, so that damage to one file cannot reach the other)."""
    best = out / BEST_DIR
    best.mkdir(exist_ok=True)
    for name in ("model.safetensors", "config.json"):
        src = out / CHECKPOINT_DIR / name
        atomic_write(best / name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    if tokenizer is not None:
        tokenizer.save(best)


def snapshot_folder(out: Path, step: int) -> Path:
    return out / SNAPSHOT_DIR / f"step-{step:06d}"


def save_snapshot(out: Path, step: int, tokenizer=None, model: GPT | None = None) -> None:
    """Keep this step's weights as OUT/snapshots/step-N, a model folder (`gptlab sample` and
    `gptlab serve` read it): hard links to the checkpoint just written (the next checkpoint
    replaces those files, so the links keep these weights), or `model` itself written there
    (step 0, before any checkpoint). Written beside and moved in: a folder there is whole."""
    final = snapshot_folder(out, step)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if model is not None:
        model.save_pretrained(tmp)
    else:
        for name in ("model.safetensors", "config.json"):
            _link_into(out / CHECKPOINT_DIR / name, tmp / name)
    if tokenizer is not None:
        tokenizer.save(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def snapshots(out: Path) -> dict[int, Path]:
    """The whole snapshots of a run: {step: folder}, in step order."""
    found = {}
    for folder in (Path(out) / SNAPSHOT_DIR).glob("step-*"):
        step = folder.name.removeprefix("step-")
        if step.isdigit() and (folder / "model.safetensors").is_file():
            found[int(step)] = folder
    return dict(sorted(found.items()))


def drop_snapshots_after(out: Path, step: int) -> None:
    """Resuming from step N: snapshots a crashed command kept after N (and half-written ones)
    go, so that the snapshots are of this run's history."""
    for folder in (Path(out) / SNAPSHOT_DIR).glob("*step-*"):
        step_of = folder.name.removeprefix("step-")
        if not step_of.isdigit() or int(step_of) > step:
            shutil.rmtree(folder, ignore_errors=True)


def _undo_cut_swap(out: Path) -> None:
    """A swap cut short after checkpoint/ moved aside: the old one is current again."""
    final, old = out / CHECKPOINT_DIR, out / OLD_DIR
    if not final.exists() and old.exists():
        os.replace(old, final)


def _link_into(src: Path, dst: Path) -> None:
    """Make dst a hard link to src (a copy where links are impossible), atomically."""
    if dst.exists() and os.path.samefile(src, dst):
        return  # already linked (a resume that saved nothing new)

    def write(tmp: str) -> None:
        os.remove(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    atomic_write(dst, write)


def _check_state(path: Path, state) -> None:
    """state.json as the trainer wrote it: counters that are whole and not negative, times
    and losses that are numbers (a loss may be null)."""
    if not isinstance(state, dict):
        raise GptlabError(f"{path}: damaged checkpoint (not a JSON object)")

    def number(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    checks = {
        "step": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "tokens": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "elapsed_s": lambda v: v is None or (number(v) and v >= 0),
        "best_val_loss": lambda v: v is None or number(v),
        "last_val_loss": lambda v: v is None or number(v),
    }
    for name, ok in checks.items():
        if (name in ("step", "tokens") and name not in state) or not ok(state.get(name)):
            raise GptlabError(f"{path}: damaged checkpoint ({name} = {state.get(name)!r})")


def _check_trainer_state(path: Path, trainer_state) -> None:
    """The optimizer state is in trainer.pt, or (parallel=fsdp) in a sharded folder beside it."""
    ok = isinstance(trainer_state, dict) and isinstance(
        trainer_state.get("data_generator"), torch.Tensor
    )
    if ok and not isinstance(trainer_state.get("optimizer"), dict):
        sharded = trainer_state.get("sharded_optimizer")
        ok = sharded == OPTIMIZER_DIR and (path.parent / sharded / ".metadata").is_file()
    if not ok:
        raise GptlabError(f"{path}: damaged checkpoint (optimizer or data state missing)")


def load(out: Path) -> tuple[GPT, dict[str, Any], dict[str, Any]]:
    """(model, trainer state, state) of OUT/checkpoint (or the previous one, if a swap was
    interrupted)."""
    folder = out / CHECKPOINT_DIR
    if not folder.is_dir() and (out / OLD_DIR).is_dir():
        folder = out / OLD_DIR
    if not folder.is_dir():
        raise GptlabError(f"{out}: no checkpoint to resume from ({CHECKPOINT_DIR}/ is missing)")
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        trainer_state = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated, garbage: OSError, ValueError, pickle errors
        if isinstance(e, OSError | ValueError):  # a file's or JSON's own words
            why = first_line(e)
        else:  # torch.load's text suggests unsafe loading: not advice to repeat
            why = "trainer.pt is not a checkpoint PyTorch can read safely"
        raise GptlabError(f"{folder}: cannot read the checkpoint ({why})") from None
    _check_state(folder / "state.json", state)
    _check_trainer_state(folder / "trainer.pt", trainer_state)
    model = GPT.from_pretrained(folder)
    return model, trainer_state, state
