"""Fault injection, for the crash tests and benchmarks/fault_campaign.py; inert unless an
environment variable asks:

    GPTLAB_FAULT=STAGE:N          die (as kill -9 would: no cleanup) the N-th time STAGE is
                                  reached; stages: weights-written, checkpoint-written,
                                  old-moved, new-moved, linked (checkpoint.save, in order)
    GPTLAB_FAULT_STEP_DELAY=S     sleep S seconds after each training step, so that a kill
                                  from outside can land anywhere in a short run
"""

from __future__ import annotations

import os
import time

_COUNTS: dict[str, int] = {}


def point(stage: str) -> None:
    wanted = os.environ.get("GPTLAB_FAULT")
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != stage:
        return
    _COUNTS[stage] = _COUNTS.get(stage, 0) + 1
    if _COUNTS[stage] == int(nth or 1):
        os._exit(137)


def step_delay() -> None:
    seconds = os.environ.get("GPTLAB_FAULT_STEP_DELAY")
    if seconds:
        time.sleep(float(seconds))
