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
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write, atomic_write_json
from gptlab.model import GPT

CHECKPOINT_DIR = "checkpoint"
OLD_DIR = ".checkpoint.old"  # the previous checkpoint, while a new one is swapped in
BEST_DIR = "best"


def save(
    out: Path, model: GPT, trainer_state: dict[str, Any], state: dict[str, Any], tokenizer=None
) -> None:
    tmp = out / ".checkpoint.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    atomic_write(tmp / "trainer.pt", lambda path: torch.save(trainer_state, path))
    atomic_write_json(tmp / "state.json", state)
    final, old = out / CHECKPOINT_DIR, out / OLD_DIR
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
    for name in ("model.safetensors", "config.json"):
        _link_into(final / name, out / name)
    if tokenizer is not None:
        tokenizer.save(out)


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


def _link_into(src: Path, dst: Path) -> None:
    """Make dst a hard link to src (a copy where links are impossible), atomically."""

    def write(tmp: str) -> None:
        os.remove(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    atomic_write(dst, write)


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
    except (OSError, ValueError, RuntimeError) as e:
        raise GptlabError(f"{folder}: cannot read the checkpoint ({e})") from e
    model = GPT.from_pretrained(folder)
    return model, trainer_state, state
