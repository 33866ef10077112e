"""Fault injection, for the crash tests and benchmarks/fault_campaign.py; inert unless an
environment variable asks (read once, at the first fault point a process reaches):

    GPTLAB_FAULT=STAGE:N          die (as kill -9 would: no cleanup) the N-th time STAGE is
                                  reached; stages: weights-written, checkpoint-written,
                                  old-moved, new-moved, linked (checkpoint.save, in order)
    GPTLAB_FAULT_STEP_DELAY=S     sleep S seconds after each training step, so that a kill
                                  from outside can land anywhere in a short run
    GPTLAB_FAULT_DELAY=STAGE:R:S  rank R sleeps S seconds when it reaches STAGE, so that a race
                                  between processes shows every time; stages: data-read (each
                                  rank reads the run's newly prepared data, before rank 0
                                  commits it)
"""

from __future__ import annotations

import functools
import os
import time

_COUNTS: dict[str, int] = {}


@functools.cache
def _settings() -> tuple[str, int, float, tuple[str, int, float] | None]:
    """(die stage, die at its N-th time, step delay, (delay stage, rank, seconds) or None)."""
    stage, _, nth = os.environ.get("GPTLAB_FAULT", "").partition(":")
    step_delay = float(os.environ.get("GPTLAB_FAULT_STEP_DELAY") or 0)
    delay = None
    if os.environ.get("GPTLAB_FAULT_DELAY"):
        name, rank, seconds = os.environ["GPTLAB_FAULT_DELAY"].split(":")
        delay = (name, int(rank), float(seconds))
    return stage, int(nth or 1), step_delay, delay


def point(stage: str) -> None:
    """Die here if GPTLAB_FAULT names this stage and this is its N-th time."""
    wanted, nth, _, _ = _settings()
    if wanted != stage:
        return
    _COUNTS[stage] = _COUNTS.get(stage, 0) + 1
    if _COUNTS[stage] == nth:
        os._exit(137)


def step_delay() -> None:
    seconds = _settings()[2]
    if seconds:
        time.sleep(seconds)


def delay(stage: str, rank: int) -> None:
    """Sleep here if GPTLAB_FAULT_DELAY names this stage and this process's rank."""
    wanted = _settings()[3]
    if wanted is not None and wanted[:2] == (stage, rank):
        time.sleep(wanted[2])
