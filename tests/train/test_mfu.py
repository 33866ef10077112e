"""Tokens/s and model FLOPs utilisation: the formula, the peak's sources, and what a run logs."""

import json

import pytest

from gptlab.config import GPTConfig, TrainConfig
from gptlab.model import GPT
from gptlab.train import mfu, train


def test_flops_per_token_of_gpt2_small():
    """6N + 12 L C T: N = the 85M block weights + the 38.6M tied head (no position table)."""
    config = GPTConfig.preset("gpt2")
    n = GPT(config).num_params(include_position_embedding=False)
    assert n == 124_439_808 - 1024 * 768
    assert mfu.flops_per_token(config, n) == 6 * n + 12 * 12 * 768 * 1024


@pytest.mark.parametrize(
    "name, dtype, peak",
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989.0),
        ("NVIDIA H100 PCIe", "bfloat16", 756.0),
        ("NVIDIA H200", "float32", 67.0),
        ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
        ("NVIDIA L4", "float16", 121.0),
        ("NVIDIA L40S", "bfloat16", 362.0),
        ("Tesla T4", "float16", 65.0),
        ("Tesla T4", "bfloat16", None),  # no bfloat16 tensor cores
        ("NVIDIA L40", "bfloat16", 181.0),  # not the L4
        ("NVIDIA H200 NVL", "bfloat16", 835.0),
        ("NVIDIA GeForce RTX 3060", "bfloat16", None),
    ],
)
def test_gpu_peaks_come_from_the_table_by_name(name, dtype, peak):
    assert mfu.gpu_peak_tflops(name, dtype) == peak


def test_the_cpu_probe_measures_a_plausible_peak():
    tflops = mfu.cpu_matmul_tflops("float32", 1, budget_s=0.02)
    assert 1e-3 < tflops < 10  # one core of any CPU of the last 15 years, in float32


def test_a_run_logs_tokens_per_second_and_mfu_against_the_given_peak(tmp_path):
    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 100)
    config = TrainConfig(
        data=str(tmp_path / "t.txt"),
        out=str(tmp_path / "r"),
        batch_size=4,
        max_iters=4,
        eval_interval=2,
        eval_iters=1,
        threads=1,
        peak_tflops=0.5,
    )
    model_config = GPTConfig.preset("tiny", block_size=16)
    result = train(model_config, config, progress=False)
    rows = [json.loads(r) for r in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    n = GPT.from_pretrained(tmp_path / "r").num_params(include_position_embedding=False)
    per_token = mfu.flops_per_token(model_config, n)
    # step 2's row covers steps 1-2, step 4's steps 3-4: tokens over their own wall time
    for row, steps in zip(rows, (result.step_seconds[:2], result.step_seconds[2:]), strict=True):
        assert row["tokens_per_s"] == pytest.approx(2 * 4 * 16 / sum(steps), rel=1e-3)
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * per_token / 0.5e12, rel=1e-3)


def fake_cpu(gflops: float, wait_s: float = 0.0):
    """seconds(n) of a CPU reaching `gflops` whose every product also waits `wait_s` (and 20 us
    of call overhead)."""
    return lambda n: 2 * n**3 / (gflops * 1e9) + wait_s + 20e-6


@pytest.mark.parametrize(
    "cpu, sides, best",
    [
        (fake_cpu(150), [128, 256, 512, 1024], 1024),  # 2-core AVX2, float32: 1024^3 in 14 ms
        (fake_cpu(150, wait_s=0.02), [128, 256, 512, 1024], 1024),  # busy: every product waits
        (fake_cpu(150, wait_s=0.05), [128, 256, 512, 1024], 1024),  # busier
        (fake_cpu(5), [128, 256, 512], 512),  # a slow CPU: 512^3 in 54 ms, 8x 256^3: stop
        (fake_cpu(1.0), [128, 256], 256),  # bfloat16 emulated on AVX2: 256^3 in 34 ms, stop
        (fake_cpu(3000), [128, 256, 512, 1024, 2048], 2048),  # many cores: up to the cap
    ],
)
def test_the_cpu_probe_grows_to_a_side_whose_work_dominates(cpu, sides, best):
    times = mfu.probe_sides(cpu)
    assert list(times) == sides
    assert mfu.best_side(times) == best
    assert sum(times.values()) * 2 < 1.0  # the probe stays cheap at a run's start


@pytest.mark.parametrize("wait_s", [0.015, 0.035, 0.1])
def test_a_busy_host_does_not_shrink_the_peak_200_fold(wait_s):
    # earlier rules stopped at 128 when a 128^3 product took 14-20 ms (then 31+ ms) of waits
    times = mfu.probe_sides(fake_cpu(150, wait_s=wait_s))
    side = mfu.best_side(times)
    assert 2 * side**3 / times[side] / 1e9 > 150 / 8  # not 0.1-0.3 GFLOP/s as at 128
