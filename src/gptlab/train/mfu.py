"""Model FLOPs utilisation (MFU): the share of the hardware's peak arithmetic that the model's
own FLOPs use, tokens/s x FLOPs per token / peak FLOP/s.

A trained token costs 6N FLOPs for the N weights of the matrix products (a multiply and an
add per weight forward, twice that backward), plus attention's scores and weighted sums,
12 x n_layer x n_embd x T (PaLM, appendix B). Recomputation (activation checkpointing) is not
counted: MFU measures the model's work, not the hardware's.

The peak: `peak_tflops=` when given; for known GPUs a table of datasheet figures (dense, per
GPU, for the run's dtype); on a CPU a matrix-product probe in the run's dtype measured once
per process, so CPU MFU reads "of what this CPU's matmul reaches", not of a datasheet.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable

import torch

from gptlab.config import GPTConfig, TrainConfig

# (name as a word of torch.cuda.get_device_name, float32, bfloat16, float16 TFLOP/s): NVIDIA
# datasheets, dense (no sparsity), float32 without TF32 (gptlab leaves TF32 off); None where
# the GPU has no tensor cores for that dtype. More specific names first ("H100 PCIe" before
# "H100"); names match as whole words, so "L4" is not "L40".
GPU_PEAK_TFLOPS: tuple[tuple[str, float, float | None, float], ...] = (
    ("H200 NVL", 60.0, 835.0, 835.0),
    ("H200", 67.0, 989.0, 989.0),  # SXM
    ("H100 PCIe", 51.0, 756.0, 756.0),
    ("H100 NVL", 60.0, 835.0, 835.0),
    ("H100", 67.0, 989.0, 989.0),  # SXM
    ("A100", 19.5, 312.0, 312.0),
    ("L40S", 91.6, 362.0, 362.0),
    ("L40", 90.5, 181.0, 181.0),
    ("L4", 30.3, 121.0, 121.0),
    ("RTX 4090", 82.6, 165.2, 165.2),
    ("V100", 15.7, None, 125.0),
    ("T4", 8.1, None, 65.0),
)


def flops_per_token(config: GPTConfig, n_matmul_params: int) -> int:
    """Training FLOPs per token: 6N + 12 L C T (forward and backward)."""
    return 6 * n_matmul_params + 12 * config.n_layer * config.n_embd * config.block_size


def gpu_peak_tflops(name: str, dtype: str) -> float | None:
    """The table's peak for a GPU name and dtype, or None for a GPU it does not know."""
    for key, fp32, bf16, fp16 in GPU_PEAK_TFLOPS:
        if re.search(rf"(?<![\w]){re.escape(key)}(?![\w])", name, re.IGNORECASE):
            return {"float32": fp32, "bfloat16": bf16, "float16": fp16}[dtype]
    return None


def probe_sides(
    seconds: Callable[[int], float],
    first: int = 128,
    last: int = 2048,
    enough_s: float = 0.01,
    busy_up_to: int = 1024,
    spend_s: float = 1.0,
) -> dict[int, float]:
    """Time square products of growing sides: {side: seconds of its fastest product}.

    `seconds(n)` times one n x n product; each side is timed twice (the first is also the
    warm-up). The side doubles while a product takes under `enough_s` (up to `last`). Beyond
    that it doubles on to `busy_up_to` while the time has not yet grown like the work (a
    doubled side is 8x the work: under 4x the time means waits, not work, dominate, as on a
    busy host whose scheduler makes even a 128 product take tens of ms), within `spend_s` in
    all; a dtype the CPU emulates grows ~8x per doubling and stops early.
    """
    times: dict[int, float] = {}
    side, before, spent = first, None, 0.0
    while True:
        a, b = seconds(side), seconds(side)
        t = times[side] = min(a, b)
        spent += a + b
        if side >= last:
            return times
        work_shows = before is not None and t >= 4 * before
        if t >= enough_s and (side >= busy_up_to or work_shows or spent >= spend_s):
            return times
        side, before = side * 2, t


def best_side(times: dict[int, float]) -> int:
    """The side whose fastest product reached the most FLOP/s."""
    return max(times, key=lambda n: 2 * n**3 / times[n])


@functools.cache
def cpu_matmul_tflops(dtype: str, threads: int, budget_s: float = 0.1) -> float:
    """The best TFLOP/s of square matrix products in `dtype` on this CPU with `threads` threads.

    probe_sides grows the side, the side with the best rate repeats for `budget_s` (a third
    time at least), and its fastest product counts: a host that is busy for a moment does
    not lower the peak (MFU over 100%), and a dtype this CPU emulates (bfloat16 without
    AVX512-BF16: 1024^3 takes ~2 s on an AVX2 CPU) costs a fraction of a second, not ten.
    """
    gen = torch.Generator().manual_seed(0)  # never the global stream that dropout draws
    pairs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def seconds(n: int) -> float:
        if n not in pairs:
            pairs[n] = tuple(
                torch.randn(n, n, generator=gen).to(getattr(torch, dtype)) for _ in range(2)
            )
        a, b = pairs[n]
        t = time.perf_counter()
        a @ b
        return time.perf_counter() - t

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = probe_sides(seconds)
        side = best_side(times)
        best, end = times[side], time.perf_counter() + budget_s
        while True:  # a third product at least, then more while the budget lasts
            best = min(best, seconds(side))
            if time.perf_counter() >= end:
                break
    finally:
        torch.set_num_threads(before)
    return 2 * side**3 / best / 1e12


def peak_tflops(config: TrainConfig, device: torch.device) -> tuple[float | None, str]:
    """(peak TFLOP/s of one device for this run, where the figure comes from)."""
    if config.peak_tflops > 0:
        return config.peak_tflops, "peak_tflops="
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_tflops(name, config.dtype)
        return peak, (f"{name} datasheet" if peak else f"{name}: unknown, pass peak_tflops=")
    if device.type == "cpu":
        try:
            return cpu_matmul_tflops(config.dtype, torch.get_num_threads()), "cpu matmul probe"
        except RuntimeError as e:  # a dtype this build cannot multiply on CPU: no MFU, no stop
            return None, f"cpu matmul probe failed: {e}"
    return None, f"{device.type}: pass peak_tflops="


class Throughput:
    """Tokens/s and MFU of the whole run (all processes) from the steps' own wall time."""

    def __init__(self, model_config: GPTConfig, model, config: TrainConfig, device, world: int):
        n = model.num_params(include_position_embedding=False)  # wpe is a lookup, not a matmul
        self.per_token = flops_per_token(model_config, n)
        self.config, self.device, self.world = config, device, world
        self._peak: tuple[float | None, str] | None = None
        self.tokens = 0
        self.seconds = 0.0

    @property
    def peak(self) -> tuple[float | None, str]:
        if self._peak is None:  # probed on first use, after the run's threads are set
            self._peak = peak_tflops(self.config, self.device)
        return self._peak

    def mfu(self, tokens_per_s: float) -> float | None:
        peak = self.peak[0]
        if not peak:
            return None
        return tokens_per_s * self.per_token / (peak * 1e12 * self.world)

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    def take(self) -> dict[str, float]:
        """{tokens_per_s, mfu} over the steps since the last call (for metrics.jsonl)."""
        if self.seconds <= 0:
            return {}
        rate = self.tokens / self.seconds
        self.tokens, self.seconds = 0, 0.0
        out = {"tokens_per_s": round(rate, 1)}
        mfu = self.mfu(rate)
        if mfu is not None:
            out["mfu"] = round(mfu, 5)
        return out
