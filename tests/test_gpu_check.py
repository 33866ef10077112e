"""benchmarks/gpu_check.sh, the script the project runs first on a machine with CUDA: every
command in it is valid (its CPU smoke run passes each step), and without CUDA it says so."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_in_one_line(tmp_path):
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "gpu_check: no CUDA device here (torch.cuda.is_available() is False)"
    )


def test_the_cpu_smoke_run_passes_every_step(tmp_path):
    shared = SCRIPT.parents[2] / "shared" / "data" / "gpt2-tokenizer"  # the script's default
    if not (shared / "vocab.bpe").is_file():
        pytest.skip("GPT-2's tokenizer files (../shared/data/gpt2-tokenizer) are absent")
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "w")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    summary = result.stdout[result.stdout.index("gpu_check summary") :]
    ran = re.findall(r"^(\S+)\s+ok\s", summary, re.M)
    assert ran == [
        "prepare-char",
        "prepare-gpt2",
        "train-bfloat16",
        "sample",
        "eval",
        "speed-gpt2",
    ], summary
    # the summary carries the figures the README's speed table will take
    assert re.search(
        r"^speed: step=4 val_loss=[\d.]+ tokens_per_s=[\d.]+ mfu=[\d.]+$", summary, re.M
    ), summary
    assert re.search(r"^eval: gptlab: token perplexity [\d.]+", summary, re.M), summary
