"""A run's evaluation: the mean loss of both splits on batches fixed by (seed, step), and what
one evaluation costs (the time budget plans with it)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from gptlab.config import TrainConfig
from gptlab.data import PreparedData
from gptlab.train import sharding
from gptlab.train.distributed import Dist, all_sum


@dataclass
class Evaluation:
    """model: the network evaluated (the plain module, not its compiled or DDP wrapper); T:
    the window length; autocast: the context the forward passes run in; d: this process's
    place among the run's; sharded: FSDP, where every rank must run as many forward passes."""

    model: torch.nn.Module
    data: PreparedData
    config: TrainConfig
    T: int
    device: torch.device
    autocast: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)
    d: Dist = field(default_factory=Dist)
    sharded: bool = False

    @torch.no_grad()
    def losses(self, step: int) -> dict[str, float]:
        """Mean loss over eval_iters batches of each split -> {"train", "val"}. The batches
        come from a generator seeded by (seed, step), so evaluating never disturbs
        training's random streams.

        With N processes, rank r evaluates batches r, r + N, ... and the sums are added up
        over ranks: the same batches and mean as one process, N times sooner. Sharded, every
        rank runs the same number of forward passes (each gathers weights from all ranks):
        one with no batch left repeats its last and drops the loss."""
        config, d, data, T = self.config, self.d, self.data, self.T
        self.model.eval()
        out = {}
        for i, split in enumerate(("train", "val")):
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 2 + i)
            batches = [
                data.window_starts(split, config.batch_size, T, gen)
                for _ in range(config.eval_iters)
            ]
            mine = batches[d.rank :: d.world]
            rounds = -(-config.eval_iters // d.world) if self.sharded else len(mine)
            total = 0.0
            for r in range(rounds):
                starts = mine[min(r, len(mine) - 1)] if mine else batches[0]
                loss = self._loss(split, starts)
                total += loss if r < len(mine) else 0.0
            out[split] = all_sum(d, total, self.device) / config.eval_iters
        sharding.reshard(self.model)
        self.model.train()
        return out

    def _loss(self, split: str, starts: torch.Tensor) -> float:
        x, y = self.data.windows(split, starts, self.T)
        with self.autocast:
            return self.model(x.to(self.device), targets=y.to(self.device)).loss.float().item()

    @torch.no_grad()
    def seconds(self) -> float:
        """Seconds one evaluation takes (2 x eval_iters forward passes shared by the
        processes, plus a checkpoint save), from a timed forward pass. No random stream is
        touched."""
        config = self.config
        self.model.eval()
        starts = (
            torch.arange(config.batch_size) * self.T % max(1, len(self.data.splits["val"]) - self.T)
        )
        timed = []
        for _ in range(2):
            t = time.perf_counter()
            self._loss("val", starts)
            timed.append(time.perf_counter() - t)
        sharding.reshard(self.model)
        self.model.train()
        save_s = 0.1 + 3 * sum(p.numel() * 4 for p in self.model.parameters()) / 200e6  # ~200 MB/s
        return 2 * -(-config.eval_iters // self.d.world) * min(timed) + save_s
