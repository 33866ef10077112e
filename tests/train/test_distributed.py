"""torchrun with 2 CPU processes (gloo) trains exactly what one process trains."""

import os
import re
import subprocess
import sys

import pytest
import torch
from _torchrun import ARGS, assert_close, final, rows, run, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("ddp") / "text.txt")


def test_two_processes_equal_one_and_checkpoints_cross_over(corpus, tmp_path):
    data = ["--data", str(corpus)]
    run(tmp_path, *ARGS, *data, "--out", "one", "max_iters=8")
    # Text prepared for a 2-process run waits in OUT/.data.tmp until the run commits it to
    # OUT/data; rank 1, made slow to read it, must still find it there (rank 0 waits before
    # moving it: without that wait this run fails every time, rank 1 finding no folder).
    run(
        tmp_path,
        *ARGS,
        *data,
        "--out",
        "two",
        "max_iters=4",
        procs=2,
        GPTLAB_FAULT_DELAY="data-read:1:2",
    )
    assert (tmp_path / "two" / "data" / "meta.json").is_file()
    assert not (tmp_path / "two" / ".data.tmp").exists()
    run(tmp_path, *ARGS, *data, "--out", "mixed", "max_iters=4")
    one = final(tmp_path / "one")
    # the 2-process run at step 4 against the 1-process run's metrics at step 4
    one_rows = rows(tmp_path / "one")
    at4 = next(r for r in one_rows if r["step"] == 4)
    assert abs(rows(tmp_path / "two")[-1]["val_loss"] - at4["val_loss"]) <= 1e-5
    # torchrun checkpoint -> resumed in one process; 1-process checkpoint -> resumed by torchrun
    run(tmp_path, "--resume", "two", "--no-progress", "max_iters=8")
    run(tmp_path, "--resume", "mixed", "--no-progress", "max_iters=8", procs=2)
    assert_close(final(tmp_path / "two"), one)
    assert_close(final(tmp_path / "mixed"), one)
    assert one_rows[-1]["val_loss"] < one_rows[0]["val_loss"] - 0.1  # and they did learn


def test_each_rank_keeps_its_own_dropout_stream_across_a_resume(corpus, tmp_path):
    """With dropout, 2 processes resumed at step 4 end bitwise where 8 uninterrupted steps do:
    each rank restores its own random state (not rank 0's)."""
    args = [a for a in ARGS if not a.startswith("dropout")] + ["dropout=0.2", "--data", str(corpus)]
    run(tmp_path, *args, "--out", "whole", "max_iters=8", procs=2)
    run(tmp_path, *args, "--out", "half", "max_iters=4", procs=2)
    run(tmp_path, "--resume", "half", "--no-progress", "max_iters=8", procs=2)
    a, b = final(tmp_path / "whole")[0], final(tmp_path / "half")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_nan_on_one_rank_stops_every_rank_at_once(corpus, tmp_path):
    script = os.path.join(os.path.dirname(__file__), "_nan_on_rank1.py")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        script,
        "train",
        *ARGS,
        "--data",
        str(corpus),
        "--out",
        "run",
        "max_iters=50",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    # it returned (no rank left waiting at a collective until gloo's 30-minute timeout), and
    # every rank that got to speak said the same line (torchrun may stop the other first)
    assert result.returncode != 0
    said = re.findall(r"gptlab: error: .*?or float32", result.stderr)
    assert said and all(line == said[0] for line in said), result.stderr[-2000:]
    assert "the loss became nan at step 3" in said[0]
