"""max_time: a training that ends within its time budget, planned from its first steps."""

from __future__ import annotations

import dataclasses
import time

import torch

from gptlab.config import TrainConfig
from gptlab.train.distributed import Dist, broadcast_int


class Budget:
    """max_time > 0: time the first steps, then fix max_iters (and the cosine's end) so that
    the whole command, evaluations included, ends within max_time seconds. A max_iters that
    is reached sooner stays the limit (and lr_decay_iters stays as given).

    Timing goes on for about 2% of the budget (at least 10 steps) but never past the warmup,
    whose learning rates do not depend on max_iters (with warmup_iters >= 2), nor past the
    first evaluation: so the plan is in train.toml before any checkpoint is written, a resumed
    run follows it exactly, and the run trains as one given that max_iters from the start."""

    MIN_PROBE = 10
    PROBE_SHARE = 0.02
    MARGIN = 0.05  # keep 5% back: steps measured early run a little faster than later ones

    def __init__(self, config: TrainConfig, started: float) -> None:
        self.started = started
        self.max_time = config.max_time
        self.eval_interval = config.eval_interval
        self.limit = max(2, config.warmup_iters)

    def ready(self, step: int, step_seconds: list[float]) -> bool:
        if step >= self.limit or step % self.eval_interval == 0:
            return True
        timed = step_seconds[1:]
        if not timed:
            return False
        if step >= self.MIN_PROBE and sum(timed) >= self.PROBE_SHARE * self.max_time:
            return True
        # slow steps: do not let the probe itself run past the budget
        now = time.perf_counter() - self.started
        rest = (self.MIN_PROBE - step) * sum(timed) / len(timed)
        return now + rest > self.max_time * (1 - self.MARGIN)

    def plan(
        self,
        config: TrainConfig,
        step_seconds: list[float],
        step: int,
        eval_s: float,
        d: Dist,
        device: torch.device,
    ) -> tuple[TrainConfig, str]:
        """The steps timed so far and one evaluation's cost (`Evaluation.seconds`) -> config
        with the planned max_iters, and the line that says so. Every rank follows rank 0's."""
        timed = step_seconds[1:] or step_seconds  # the first step pays one-off costs
        step_s = sum(timed) / len(timed)
        left = config.max_time * (1 - self.MARGIN) - (time.perf_counter() - self.started)
        if step % config.eval_interval == 0:
            left -= eval_s  # the evaluation due at this very step
        iters = min(plan_iters(left, step_s, eval_s, config.eval_interval, step), config.max_iters)
        iters = broadcast_int(d, iters, device)  # every rank follows rank 0's plan
        message = (
            f"max_time={config.max_time:g}s: {step_s * 1e3:.0f} ms per step, "
            f"{eval_s:.1f}s per evaluation -> max_iters={iters}"
        )
        if left <= 0:
            message += " (the budget was spent before training could start)"
        if iters < config.max_iters:
            config = dataclasses.replace(config, max_iters=iters, lr_decay_iters=iters)
        return config, message


def plan_iters(seconds: float, step_s: float, eval_s: float, eval_interval: int, done: int) -> int:
    """The largest step count n >= done whose remaining steps (n - done) and evaluations (one
    every eval_interval steps and one at n) fit in `seconds`."""

    def cost(n: int) -> float:
        evals = n // eval_interval - done // eval_interval + (n % eval_interval != 0)
        return (n - done) * step_s + evals * eval_s

    low, high = done, done + max(1, int(seconds / max(step_s, 1e-9))) + 1
    while low < high:  # cost grows with n: binary search for the last n that fits
        mid = (low + high + 1) // 2
        if cost(mid) <= seconds:
            low = mid
        else:
            high = mid - 1
    return max(low, done)
