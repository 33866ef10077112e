"""A longer fault campaign: kill -9 a short training at random moments, N times, resuming after
each kill, then compare the final weights with an uninterrupted run (bitwise) and check that
metrics.jsonl lists every evaluation once. Half the kills land inside checkpoint writes
(GPTLAB_FAULT, see src/gptlab/train/faults.py), half anywhere (a timer).

    python benchmarks/fault_campaign.py [--kills 50] [--seed 0]

Prints kills survived / runs lost. A "lost" run is one whose resume failed, whose weights
differ from the uninterrupted run's, or whose metrics are wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from _data import print_machine

ARGS = [
    "--preset",
    "tiny",
    "--no-progress",
    "batch_size=4",
    "block_size=16",
    "eval_iters=1",
    "eval_interval=5",
    "warmup_iters=2",
    "max_iters=40",
    "lr_decay_iters=40",
    "lr=3e-3",
    "dropout=0.1",
    "threads=1",
]
STAGES = ["weights-written", "checkpoint-written", "old-moved", "new-moved", "linked"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GPTLAB_FAULT_STEP_DELAY": "0.03"}


def train(cwd: Path, args: list[str], env: dict, kill_after: float | None):
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptlab", "train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    return proc.returncode, out, err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print_machine()
    rng = random.Random(args.seed)
    text = "".join(f"line {i}: the quick brown fox, {i * 7 % 13}\n" for i in range(600))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "text.txt").write_text(text)
        base = [*ARGS, "--data", str(tmp / "text.txt"), "--out", "run"]
        ref = tmp / "reference"
        ref.mkdir()
        rc, _, err = train(ref, base, {**ENV, "GPTLAB_FAULT_STEP_DELAY": "0"}, None)
        assert rc == 0, err
        reference = load_file(ref / "run" / "model.safetensors")
        survived, lost, kills = 0, 0, 0
        runs = 0
        while kills < args.kills:
            runs += 1
            work = tmp / f"run{runs}"
            work.mkdir()
            run = work / "run"

            def resumable(run=run) -> bool:  # a checkpoint, or the old one mid-swap
                return (run / "checkpoint").is_dir() or (run / ".checkpoint.old").is_dir()

            ok = True
            for _ in range(rng.randint(1, 4)):  # kills within this run
                resume = ["--resume", "run", "--no-progress"] if resumable() else base
                if rng.random() < 0.5:
                    env = {**ENV, "GPTLAB_FAULT": f"{rng.choice(STAGES)}:{rng.randint(1, 7)}"}
                    rc, _, err = train(work, resume, env, None)
                else:
                    rc, _, err = train(work, resume, ENV, rng.uniform(2.0, 6.0))
                if rc not in (0, 137, -signal.SIGKILL):
                    ok = False
                    print(f"  run {runs}: a command failed: {err.strip()[-300:]}")
                kills += rc != 0
            for _ in range(10):  # resume until done
                resume = ["--resume", "run", "--no-progress"] if resumable() else base
                rc, out, err = train(work, resume, ENV, None)
                if rc != 0:
                    ok = False
                    print(f"  run {runs}: resume failed: {err.strip()[-300:]}")
                    break
                if "done:" in out:
                    break
            if ok:
                weights = load_file(work / "run" / "model.safetensors")
                rows = (work / "run" / "metrics.jsonl").read_text().splitlines()
                steps = [json.loads(r)["step"] for r in rows]
                ok = all(torch.equal(weights[k], reference[k]) for k in reference)
                ok = ok and steps == list(range(5, 41, 5))
                if not ok:
                    print(f"  run {runs}: weights equal {ok}, metrics steps {steps}")
            survived += ok
            lost += not ok
        t = time.strftime("%Y-%m-%d %H:%M")
        print(f"{t}: {kills} kills over {runs} runs: {survived} runs survived, {lost} lost")


if __name__ == "__main__":
    main()
