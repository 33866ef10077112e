"""Training attention on a CPU: gptlab's kernel (kernels.causal_attention) against PyTorch's
scaled_dot_product_attention (its flash kernel on a CPU), forward and forward + backward, in
float32, alternating in the same process at the shapes small models train with.

    python benchmarks/attention.py [--repeats 100] [B,T,heads,hs ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from gptlab.model import kernels

from _data import print_machine

SHAPES = [  # (batch, T, heads, head size)
    (12, 64, 4, 32),  # nanoGPT's baby GPT (benchmarks/shakespeare_char.py)
    (16, 128, 4, 32),  # gptlab's shakespeare-char preset (the README's main job)
    (8, 256, 6, 64),  # nanoGPT's Shakespeare GPU config's shapes, on a CPU
    (4, 512, 12, 64),  # the longest kernels.MAX_SEQUENCE takes
    (1, 1024, 12, 64),  # GPT-2's context: past the kernel's range (flash there)
]


def flash(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    B, T, C3 = qkv.shape
    q, k, v = (t.view(B, T, heads, -1).transpose(1, 2) for t in qkv.split(C3 // 3, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C3 // 3)


def ours(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    if qkv.requires_grad:
        return kernels._CausalAttention.apply(qkv, heads)  # (past MAX_SEQUENCE as well)
    return kernels._attention_forward(qkv, heads)[0]


def forward(f, qkv: torch.Tensor, heads: int, grad: torch.Tensor) -> None:
    with torch.no_grad():
        f(qkv, heads)


def both(f, qkv: torch.Tensor, heads: int, grad: torch.Tensor) -> None:
    f(qkv, heads).backward(grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("shapes", nargs="*", help="B,T,heads,hs")
    args = parser.parse_args()
    shapes = [tuple(int(n) for n in s.split(",")) for s in args.shapes] or SHAPES
    print_machine()
    if not kernels.vectorised():
        raise SystemExit("no AVX2 build of the kernels here: nothing to compare")
    print(f"{'B, T, heads, hs':>18} {'':>6} {'flash us':>9} {'gptlab us':>9} {'ratio':>6}")
    for B, T, H, D in shapes:
        qkv = torch.randn(B, T, 3 * H * D, requires_grad=True)
        grad = torch.randn(B, T, H * D)

        for name, run in (("fwd", forward), ("fwd+bwd", both)):
            times = {flash: [], ours: []}
            for f in times:
                for _ in range(5):
                    run(f, qkv, H, grad)
            for _ in range(args.repeats):  # alternating: the same machine phase for both
                for f, ts in times.items():
                    t0 = time.perf_counter()
                    run(f, qkv, H, grad)
                    ts.append(time.perf_counter() - t0)
            theirs, mine = (statistics.median(times[f]) * 1e6 for f in (flash, ours))
            print(
                f"{str((B, T, H, D)):>18} {name:>7} {theirs:9.0f} {mine:9.0f} {theirs / mine:5.2f}x"
            )


if __name__ == "__main__":
    main()
