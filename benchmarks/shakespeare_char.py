"""Character-level Shakespeare: gptlab's trainer beside nanoGPT, in the same run.

1. Identical settings, nanoGPT's README CPU "baby GPT" (4 layers, 4 heads, 128 wide, block 64,
   batch 12, lr 1e-3, 2000 iterations, no dropout, no biases as nanoGPT's default, float32),
   on ../shared/data/
   tinyshakespeare.txt: median ms per iteration, final val loss and whole-process seconds of
   each, and the ratio of ms per iteration.
2. The speedrun: `gptlab train --preset shakespeare-char-speedrun` as a user runs it (dtype
   auto, a fresh process), its whole-process seconds and final val loss, against nanoGPT's
   whole-process seconds to its own final val loss (part 1's run).

nanoGPT comes from ../shared/peers/nanoGPT (or NANOGPT_DIR), copied to a temporary folder.

    python benchmarks/shakespeare_char.py [--iters 2000] [--skip-baby] [--skip-speedrun]
                                          [--no-nanogpt]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _data import SHARED, print_machine, shared_file

TARGET = 1.8857  # nanoGPT's baby GPT at 2000 iterations (its README); used without nanoGPT
BABY = dict(
    n_layer=4,
    n_head=4,
    n_embd=128,
    block_size=64,
    batch_size=12,
    lr=1e-3,
    min_lr=1e-4,
    warmup_iters=100,
    eval_interval=250,
    eval_iters=20,
    dropout=0.0,
    bias=False,  # nanoGPT's default, which its Shakespeare config keeps; GPT-2's is true
    beta2=0.99,
    weight_decay=0.1,
    grad_clip=1.0,
    dtype="float32",
)


def run_gptlab(args: list[str], out: Path) -> tuple[list[float], list[dict], float]:
    """(ms of each step, metrics rows, whole-process seconds) of `gptlab train ARGS` run as a
    fresh process, as a user would."""
    script = (
        "import json, sys, time; t = time.perf_counter()\n"
        "from gptlab.cli import _train_settings, build_parser\n"
        "from gptlab.train import train\n"
        "a = build_parser().parse_args(sys.argv[1:])\n"
        "r = train(*_train_settings(a), progress=False, started=t)\n"
        "print('STEP_MS', json.dumps([s * 1e3 for s in r.step_seconds]))\n"
    )
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script, "train", "--no-progress", "--out", str(out), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    step_ms = json.loads(done.stdout.split("STEP_MS", 1)[1])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return step_ms, rows, wall


def run_nanogpt(root: Path, iters: int, tmp: Path) -> tuple[float, float, float]:
    """(median ms per iteration, last val loss, whole-process seconds) of nanoGPT's train.py."""
    work = tmp / "nanogpt"
    shutil.copytree(root, work, ignore=shutil.ignore_patterns(".git", "out*"))
    data = work / "data" / "shakespeare_char"
    if not (data / "train.bin").is_file():  # its prepare.py downloads only without input.txt
        shutil.copy(shared_file("tinyshakespeare.txt"), data / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    flags = {k: v for k, v in BABY.items() if k != "dtype"}
    flags.update(max_iters=iters, lr_decay_iters=iters, dtype="float32")
    flags["learning_rate"] = flags.pop("lr")
    cmd = [
        sys.executable,
        "train.py",
        "config/train_shakespeare_char.py",
        "--device=cpu",
        "--compile=False",
        "--log_interval=1",
    ]
    cmd += [f"--{k}={v}" for k, v in flags.items()]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    times = [
        float(m) for m in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", done.stdout, re.M)
    ]
    vals = re.findall(r"val loss ([\d.]+)", done.stdout)
    return statistics.median(times[1:]), float(vals[-1]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--skip-baby", action="store_true")
    parser.add_argument("--skip-speedrun", action="store_true")
    parser.add_argument("--no-nanogpt", action="store_true", help="gptlab's figures only")
    args = parser.parse_args()
    text = shared_file("tinyshakespeare.txt")
    nano = Path(os.environ.get("NANOGPT_DIR") or SHARED / "peers" / "nanoGPT")
    use_nano = not args.no_nanogpt and (nano / "train.py").is_file()
    print_machine()
    target, nano_wall = TARGET, None
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_baby:
            settings = [f"{k}={v}" for k, v in BABY.items()]
            settings += [f"max_iters={args.iters}", f"lr_decay_iters={args.iters}"]
            step_ms, rows, wall = run_gptlab(["--data", str(text), *settings], tmp / "baby")
            ms = statistics.median(step_ms[1:])
            print(f"1. baby GPT, identical settings, {args.iters} iterations, float32:")
            print(
                f"  gptlab   {ms:6.1f} ms/iter  val loss {rows[-1]['val_loss']:.4f}  "
                f"{wall:5.1f} s whole process"
            )
            if use_nano:
                n_ms, n_val, nano_wall = run_nanogpt(nano, args.iters, tmp)
                target = n_val
                print(
                    f"  nanoGPT  {n_ms:6.1f} ms/iter  val loss {n_val:.4f}  "
                    f"{nano_wall:5.1f} s whole process"
                )
                print(
                    f"  ratio nanoGPT / gptlab ms per iteration = {n_ms / ms:.2f} "
                    "(> 1: gptlab faster)"
                )
            else:
                print(f"  (nanoGPT not found at {nano}: gptlab only)")
        if not args.skip_speedrun:
            _, rows, wall = run_gptlab(
                ["--preset", "shakespeare-char-speedrun", "--data", str(text)],
                tmp / "speedrun",
            )
            final = rows[-1]
            print("2. gptlab train --preset shakespeare-char-speedrun (dtype auto):")
            for r in rows:
                print(f"  step {r['step']:5d}  val {r['val_loss']:.4f}  {r['elapsed_s']:6.1f} s")
            reached = final["val_loss"] <= target
            print(
                f"  whole process {wall:.1f} s, final val loss {final['val_loss']:.4f} "
                f"({'<=' if reached else 'NOT <='} target {target:.4f})"
            )
            if nano_wall is not None:
                print(f"  nanoGPT whole process {nano_wall:.1f} s to val loss {target:.4f}")
                print(
                    f"  ratio nanoGPT / gptlab wall time = {nano_wall / wall:.2f}"
                    + ("" if reached else " (target not reached: not a valid ratio)")
                )


if __name__ == "__main__":
    main()
