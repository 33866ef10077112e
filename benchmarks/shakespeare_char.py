"""Character-level Shakespeare: gptlab's trainer against nanoGPT, and the speedrun preset.

1. nanoGPT's README CPU "baby GPT" settings (4 layers, 4 heads, 128 wide, block 64, batch 12,
   lr 1e-3, 2000 iterations, no dropout, float32) on ../shared/data/tinyshakespeare.txt:
   median ms per iteration and final val loss, for gptlab and, when NANOGPT_DIR names a local
   nanoGPT checkout, for nanoGPT in the same run (else gptlab's figures only).
2. The preset shakespeare-char-speedrun: seconds (metrics.jsonl elapsed_s, start-up and data
   preparation included) until val loss <= 1.8857, nanoGPT's figure at step 2000.

    python benchmarks/shakespeare_char.py [--iters 2000] [--skip-baby] [--skip-speedrun]
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

from _data import shared_file

TARGET = 1.8857
BABY = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, lr=1e-3,
            min_lr=1e-4, warmup_iters=100, eval_interval=250, eval_iters=20, dropout=0.0,
            beta2=0.99, weight_decay=0.1, grad_clip=1.0)  # fmt: skip


def run_gptlab(args: list[str], tmp: Path) -> tuple[float, list[dict], float]:
    """(median ms per step, metrics rows, wall seconds) of one gptlab training command."""
    from gptlab.cli import _train_settings, build_parser
    from gptlab.train import train

    started = time.perf_counter()
    parsed = build_parser().parse_args(["train", "--no-progress", *args])
    model_config, train_config = _train_settings(parsed)
    result = train(model_config, train_config, progress=False, started=started)
    wall = time.perf_counter() - started
    metrics = (Path(train_config.out) / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in metrics]
    return statistics.median(result.step_seconds) * 1e3, rows, wall


def run_nanogpt(root: Path, text: Path, iters: int, tmp: Path) -> tuple[float, float, float]:
    """(median ms per iteration, last val loss, wall seconds) of nanoGPT's train.py."""
    work = tmp / "nanogpt"
    shutil.copytree(root, work, ignore=shutil.ignore_patterns(".git", "out*"))
    data = work / "data" / "shakespeare_char"
    shutil.copy(text, data / "input.txt")  # its prepare.py downloads only when this is absent
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    flags = dict(BABY, max_iters=iters, lr_decay_iters=iters)
    flags["learning_rate"] = flags.pop("lr")
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
           "--compile=False", "--log_interval=1"]  # fmt: skip
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
    args = parser.parse_args()
    text = shared_file("tinyshakespeare.txt")
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_baby:
            settings = [f"{k}={v}" for k, v in BABY.items()]
            settings += [f"max_iters={args.iters}", f"lr_decay_iters={args.iters}"]
            ms, rows, wall = run_gptlab(
                ["--data", str(text), "--out", str(tmp / "baby"), *settings], tmp
            )
            print(f"baby GPT, {args.iters} iterations, float32:")
            print(f"  gptlab   {ms:6.1f} ms/iter  val loss {rows[-1]['val_loss']:.4f}  {wall:.0f}s")
            nano = os.environ.get("NANOGPT_DIR")
            if nano:
                n_ms, n_val, n_wall = run_nanogpt(Path(nano), text, args.iters, tmp)
                print(f"  nanoGPT  {n_ms:6.1f} ms/iter  val loss {n_val:.4f}  {n_wall:.0f}s")
                print(f"  ratio gptlab / nanoGPT ms per iteration = {ms / n_ms:.3f}")
            else:
                print("  (set NANOGPT_DIR to a nanoGPT checkout to measure it side by side)")
        if not args.skip_speedrun:
            _, rows, wall = run_gptlab(
                ["--preset", "shakespeare-char-speedrun", "--data", str(text),
                 "--out", str(tmp / "speedrun")], tmp,
            )  # fmt: skip
            hit = next((r for r in rows if r["val_loss"] <= TARGET), None)
            print("shakespeare-char-speedrun:")
            for r in rows:
                print(f"  step {r['step']:5d}  val {r['val_loss']:.4f}  {r['elapsed_s']:6.1f}s")
            if hit:
                print(f"  val loss <= {TARGET} at {hit['elapsed_s']:.1f}s (step {hit['step']})")
            else:
                print(f"  never reached val loss <= {TARGET} ({wall:.0f}s)")


if __name__ == "__main__":
    main()
