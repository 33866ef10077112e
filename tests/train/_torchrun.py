"""Running `gptlab train` as one process or under torchrun with N CPU processes (gloo), and
comparing the runs' final weights and losses."""

import json
import os
import subprocess
import sys

from safetensors.torch import load_file

# float32 whatever `auto` means here: these runs are compared to 1e-5 or bit for bit, which
# bfloat16 autocast (auto on a CPU with AVX512-BF16) does not give between process counts
ARGS = [
    "--preset",
    "tiny",
    "--no-progress",
    "batch_size=2",
    "grad_accum=2",
    "block_size=16",
    "eval_interval=2",
    "eval_iters=1",
    "warmup_iters=2",
    "lr_decay_iters=8",
    "lr=3e-3",
    "threads=1",
    "dropout=0.0",
    "dtype=float32",
]


def write_corpus(path):
    path.write_text("".join(f"line {i}: the quick brown fox, {i * 7 % 13}\n" for i in range(800)))
    return path


def run(cwd, *args, procs=1, **env):
    """`gptlab train ARGS` in cwd: one process runs in this one (no start-up to pay; the
    trainer restores the thread count it changes), more under torchrun."""
    if procs == 1 and not env:
        return _in_process(cwd, args)
    if procs == 1:
        cmd = [sys.executable, "-m", "gptlab", "train", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={procs}",
            "-m",
            "gptlab",
            "train",
            *args,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _in_process(cwd, args):
    from gptlab.cli import main

    before = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(["train", *args])
    finally:
        os.chdir(before)
    assert code == 0
    return code


def final(folder):
    """(the run folder's weights, its last metrics row)."""
    rows = (folder / "metrics.jsonl").read_text().splitlines()
    return load_file(folder / "model.safetensors"), json.loads(rows[-1])


def rows(folder):
    return [json.loads(r) for r in (folder / "metrics.jsonl").read_text().splitlines()]


def assert_close(a, b, tol=1e-5):
    (wa, ma), (wb, mb) = a, b
    assert abs(ma["train_loss"] - mb["train_loss"]) <= tol
    assert abs(ma["val_loss"] - mb["val_loss"]) <= tol
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= tol, f"max |weight diff| = {worst}"
