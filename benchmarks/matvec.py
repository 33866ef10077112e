"""The CPU matrix-vector claims behind gptlab's sampling speed, each against its peer:

1. layout: x @ W with W stored (in, out) (gptlab's `Linear`, Hugging Face's Conv1D) against
   x @ W.T with W stored (out, in) (`nn.Linear`), one row x, GPT-2 small's matrices and head;
2. split and kernel: `few_rows_matmul` (the input dimension cut into one part per thread, the
   fallback) and gptlab's compiled float32 kernel (`gptlab.model.kernels.matmul`), each
   against a plain x @ W on the same (in, out) matrix; each matrix alone (repeated, so the
   block matrices stay in cache) and then
   2b. from memory, as in decoding: the 48 block matrices of GPT-2 small one after another;
3. int8 candidates for the same products with int8 weights (per-output scales): gptlab's C
   kernel (`gptlab.model.int8.int8_matmul`), PyTorch's `torch._weight_int8pack_mm`, and a
   dequantise-then-multiply, against the float32 product gptlab decodes with.

Each line prints microseconds per product (median) and GB/s of weights read.

    python benchmarks/matvec.py [--rows 1] [--repeat 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gptlab.model import kernels
from gptlab.model.fast import decoding_matmul, few_rows_matmul

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
    totals = {"(out, in)": 0.0, "(in, out)": 0.0, "split": 0.0, "kernel": 0.0}
    if kernels.library() is None:
        print("no C compiler: the kernel column is the split again")
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
                "kernel": median_us(lambda w=w, x=x: decoding_matmul(x, w), args.repeat),
            }
            gb = w.numel() * 4 / 1e9
            shown = "  ".join(f"{k} {v:8.1f} ({gb / (v * 1e-6):5.1f})" for k, v in results.items())
            print(f"  {name:<20} {shown}")
            for k, v in results.items():
                totals[k] += v
    print("all four, summed:")
    print(
        f"  1. layout: (out, in) / (in, out) time = "
        f"{totals['(out, in)'] / totals['(in, out)']:.2f}  (> 1: gptlab's layout faster)"
    )
    print(
        f"  2. split: plain (in, out) / few_rows_matmul time = "
        f"{totals['(in, out)'] / totals['split']:.2f}  (> 1: the split faster)"
    )
    print(
        f"     kernel: plain (in, out) / gptlab's kernel time = "
        f"{totals['(in, out)'] / totals['kernel']:.2f}  (> 1: the kernel faster)"
    )
    from_memory(args)
    int8_candidates(args)


def from_memory(args) -> None:
    """2b. GPT-2 small's 48 block matrices one after another (340 MB: from memory, not cache),
    as a decoding step reads them; ms per pass over all of them."""
    shapes = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12
    weights = [torch.randn(shape) for shape in shapes]
    biases = [torch.randn(shape[1]) for shape in shapes]
    xs = {n: torch.randn(args.rows, n) for n in (768, 3072)}
    pairs = list(zip(weights, biases, strict=True))
    runs = {
        "plain addmm": lambda: [torch.addmm(b, xs[w.size(0)], w) for w, b in pairs],
        "split": lambda: [few_rows_matmul(xs[w.size(0)], w) for w in weights],
        "kernel": lambda: [decoding_matmul(xs[w.size(0)], w, b) for w, b in pairs],
    }
    with torch.no_grad():
        times = {k: median_us(fn, max(args.repeat // 20, 5)) / 1e3 for k, fn in runs.items()}
    gb = sum(w.numel() for w in weights) * 4 / 1e9
    shown = "  ".join(f"{k} {v:6.2f} ms ({gb / (v * 1e-3):5.1f} GB/s)" for k, v in times.items())
    print(f"2b. from memory, the 48 block matrices, rows {args.rows}: {shown}")
    print(
        f"  plain / kernel time = {times['plain addmm'] / times['kernel']:.2f}, "
        f"split / kernel = {times['split'] / times['kernel']:.2f}  (> 1: the kernel faster)"
    )


def int8_candidates(args) -> None:
    """3. The same products with int8 weights, each candidate against gptlab float32."""
    from gptlab.model.int8 import int8_matmul, kernel, quantize

    print(
        f"int8 weights, rows {args.rows}; us per product (GB/s of weights read); C kernel "
        f"{'built' if kernel() else 'unavailable (no compiler): its row is the fallback'}"
    )
    totals: dict[str, float] = {}
    with torch.no_grad():
        for name, (n_in, n_out) in SHAPES.items():
            w = torch.randn(n_in, n_out) * 0.02
            q, scale = quantize(w.t())  # (out, in) int8, (out,)
            x = torch.randn(args.rows, n_in)
            results = {
                "float32": median_us(lambda w=w, x=x: decoding_matmul(x, w), args.repeat),
                "C kernel": median_us(lambda q=q, s=scale, x=x: int8_matmul(x, q, s), args.repeat),
                "dequantise": median_us(
                    lambda q=q, s=scale, x=x: x @ (q.float() * s[:, None]).t(), args.repeat // 4
                ),
            }
            try:  # PyTorch's own int8 weight-only product (private; may change or vanish)
                results["_weight_int8pack_mm"] = median_us(
                    lambda q=q, s=scale, x=x: torch._weight_int8pack_mm(x, q, s), args.repeat
                )
            except (AttributeError, RuntimeError):
                pass
            bytes_ = {k: q.numel() * (4 if k.startswith("float") else 1) for k in results}
            shown = "  ".join(
                f"{k} {v:8.1f} ({bytes_[k] / 1e3 / v:5.1f})" for k, v in results.items()
            )
            print(f"  {name:<20} {shown}")
            for k, v in results.items():
                totals[k] = totals.get(k, 0.0) + v
    base = totals["float32"]
    print(
        "  all four, gptlab float32 time / candidate time: "
        + ", ".join(f"{k} {base / v:.2f}" for k, v in totals.items() if k != "float32")
    )


if __name__ == "__main__":
    main()
