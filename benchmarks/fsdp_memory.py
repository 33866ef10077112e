"""Peak memory per process of ddp against fsdp, both under torchrun with 2 CPU processes
(gloo), training the gpt2-medium preset (355M parameters) for a few steps with the real
trainer, checkpoints included.

Each rank reports its own peak resident memory (ru_maxrss, on CUDA also the allocator's peak),
and the script prints them side by side with the fsdp/ddp ratio and, for scale, the bytes
that weights + gradients + AdamW's moments need per process (16 bytes per parameter, over N
processes under fsdp). A few minutes on a 2-core CPU; 12 GB of memory.

    python benchmarks/fsdp_memory.py [--preset gpt2-medium] [--steps 3] [--block 128]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from _data import SHARED_DATA, print_machine

HERE = Path(__file__).resolve().parent


def peak_of(mode: str, preset: str, steps: int, block: int, data: Path, out: Path) -> dict:
    """{rank: (peak RSS MB, peak CUDA MB or None)} of one torchrun of `gptlab train`."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(HERE / "_peak_memory.py"),
        "train",
        "--preset",
        preset,
        "--data",
        str(data),
        "--out",
        str(out / mode),
        "--no-progress",
        "batch_size=1",
        "grad_accum=2",
        f"block_size={block}",
        f"max_iters={steps}",
        f"eval_interval={steps}",
        "eval_iters=2",
        "warmup_iters=1",
        "threads=1",
        "dtype=float32",
        f"parallel={mode}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    peaks = {}
    for rank, rss, cuda in re.findall(
        r"peak rank=(\d+) rss_mb=([\d.]+) cuda_mb=(\S+)", result.stdout
    ):
        peaks[int(rank)] = (float(rss), None if cuda == "-" else float(cuda))
    return peaks


def gpt2_tokenizer() -> str:
    """GPT-2's tokenizer: the files beside the repo where present, else the hub's."""
    local = SHARED_DATA / "gpt2-tokenizer"
    return str(local) if (local / "vocab.bpe").is_file() else "gpt2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-medium")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--block", type=int, default=128)
    args = parser.parse_args()
    print_machine()
    from gptlab.config import GPTConfig
    from gptlab.model import GPT

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text = tmp / "text.txt"
        text.write_text("".join(f"line {i}: the quick brown fox, {i % 97}\n" for i in range(3000)))
        data = tmp / "prep"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "gptlab",
                "prepare",
                "--input",
                str(text),
                "--out",
                str(data),
                "--tokenizer",
                gpt2_tokenizer(),
            ],
            check=True,
            capture_output=True,
        )
        import torch

        with torch.device("meta"):
            n = GPT(GPTConfig.preset(args.preset)).num_params()
        print(
            f"{args.preset}: {n / 1e6:.0f}M parameters, batch 1 x {args.block}, "
            f"{args.steps} steps, 2 processes, float32"
        )
        print(
            f"weights + gradients + AdamW moments per process: ddp {16 * n / 2**30:.2f} GiB, "
            f"fsdp {16 * n / 2 / 2**30:.2f} GiB"
        )
        peaks = {
            m: peak_of(m, args.preset, args.steps, args.block, data, tmp) for m in ("ddp", "fsdp")
        }
    print(f"{'rank':>4} {'ddp peak RSS':>14} {'fsdp peak RSS':>14} {'fsdp/ddp':>9}")
    for rank in sorted(peaks["ddp"]):
        ddp, fsdp = peaks["ddp"][rank][0], peaks["fsdp"][rank][0]
        print(f"{rank:>4} {ddp / 1024:>10.2f} GiB {fsdp / 1024:>10.2f} GiB {fsdp / ddp:>9.2f}")
    if peaks["ddp"][0][1] is not None:
        for rank in sorted(peaks["ddp"]):
            ddp, fsdp = peaks["ddp"][rank][1], peaks["fsdp"][rank][1]
            print(f"{rank:>4} CUDA peak: ddp {ddp:.0f} MB, fsdp {fsdp:.0f} MB ({fsdp / ddp:.2f})")


if __name__ == "__main__":
    main()
