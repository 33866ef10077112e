"""The two CPU matrix-vector claims behind gptlab's sampling speed, each against its peer:

1. layout: x @ W with W stored (in, out) (gptlab's `Linear`, Hugging Face's Conv1D) against
   x @ W.T with W stored (out, in) (`nn.Linear`), one row x, GPT-2 small's matrices and head;
2. split: `few_rows_matmul` (the input dimension cut into one part per thread) against a plain
   x @ W on the same (in, out) matrix.

Each line prints microseconds per product (median) and GB/s of weights read.

    python benchmarks/matvec.py [--rows 1] [--repeat 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gptlab.model.fast import few_rows_matmul

from _data import print_machine

SHAPES = {  # GPT-2 small: (in, out)
    "c_attn 768x2304": (768, 2304),
    "c_fc 768x3072": (768, 3072),
    "mlp c_proj 3072x768": (3072, 768),
    "head 768x50257": (768, 50257),
}


def median_us(fn, repeat: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    print_machine()
    torch.manual_seed(0)
    totals = {"(out, in)": 0.0, "(in, out)": 0.0, "split": 0.0}
    print(f"rows {args.rows}, float32, median of {args.repeat}; us per product (GB/s read)")
    with torch.no_grad():
        for name, (n_in, n_out) in SHAPES.items():
            w = torch.randn(n_in, n_out)  # (in, out)
            w_t = w.t().contiguous()  # (out, in), as nn.Linear stores it
            x = torch.randn(args.rows, n_in)
            assert torch.allclose(few_rows_matmul(x, w), x @ w, atol=1e-3)
            results = {
                "(out, in)": median_us(lambda w_t=w_t, x=x: x @ w_t.t(), args.repeat),
                "(in, out)": median_us(lambda w=w, x=x: x @ w, args.repeat),
                "split": median_us(lambda w=w, x=x: few_rows_matmul(x, w), args.repeat),
            }
            gb = w.numel() * 4 / 1e9
            shown = "  ".join(f"{k} {v:8.1f} ({gb / (v * 1e-6):5.1f})" for k, v in results.items())
            print(f"  {name:<20} {shown}")
            for k, v in results.items():
                totals[k] += v
    print("all four, summed:")
    print(f"  1. layout: (out, in) / (in, out) time = "
          f"{totals['(out, in)'] / totals['(in, out)']:.2f}  (> 1: gptlab's layout faster)")
    print(f"  2. split: plain (in, out) / few_rows_matmul time = "
          f"{totals['(in, out)'] / totals['split']:.2f}  (> 1: the split faster)")  # fmt: skip


if __name__ == "__main__":
    main()
