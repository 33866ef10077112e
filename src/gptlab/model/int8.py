"""Weight-only int8: each projection's weights as int8 with one float32 scale per output
(symmetric, per channel), activations and arithmetic in float32.

Decoding reads every weight once per token, so it runs at the speed memory delivers bytes: a
quarter of float32's bytes is up to 4x the tokens/s bound. What is lost is each weight's
rounding to 255 levels of its row's largest magnitude (error <= scale / 2 per weight).

The product needs a kernel that reads int8 and accumulates in float32 without first making a
float32 copy of the matrix (which would read and write more than float32 itself). PyTorch's
own int8 kernels are slow on a CPU without AVX-512 (benchmarks/matvec.py measures), so
`kernel()` is gptlab's own, compiled from kernels.c at first use (gptlab.model.kernels). Where
there is no compiler, `Int8Linear` multiplies by the dequantised matrix instead: the same
numbers, slower.

The checkpoint format of int8 weights (config.json marks it) lives with the other formats in
gptlab.model.hf; this module is the arithmetic only.
"""

from __future__ import annotations

import torch
from torch import nn

from gptlab.model import kernels

KERNEL_MAX_ROWS = 64  # longer inputs (a prompt) go through the dequantised matrix


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (N, K), one row per output -> (int8 (N, K), float32 scales (N,)), with
    weight ~= q * scale[:, None] and |q| <= 127."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def kernel():
    """The compiled int8 product (gptlab.model.kernels), or None where it cannot be built."""
    lib = kernels.library()
    return None if lib is None else lib.gptlab_int8_matmul


def int8_matmul(
    x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x (M, K) @ (q (N, K) int8 * scale (N,))^T + bias -> (M, N), in x's dtype. The C kernel
    runs only where everything is as it expects (CPU, float32, int8, contiguous); anything
    else multiplies by the dequantised matrix."""
    tensors = (x, q, scale) if bias is None else (x, q, scale, bias)
    usable = (
        x.size(0) <= KERNEL_MAX_ROWS
        and all(t.device.type == "cpu" for t in tensors)
        and x.dtype == scale.dtype == torch.float32
        and q.dtype == torch.int8
        and q.is_contiguous()
        and scale.is_contiguous()
        and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()))
    )
    run = kernel() if usable else None
    if run is None:
        w = q.to(x.dtype) * scale.to(x.dtype)[:, None]  # dequantised: the same numbers
        return x @ w.t() if bias is None else torch.addmm(bias.to(x.dtype), x, w.t())
    x = x.contiguous()
    M, K = x.shape
    y = torch.empty(M, q.size(0), dtype=torch.float32)
    run(
        x.data_ptr(),
        q.data_ptr(),
        scale.data_ptr(),
        None if bias is None else bias.data_ptr(),
        y.data_ptr(),
        M,
        K,
        q.size(0),
    )
    return y


class Int8Linear(nn.Module):
    """A Linear (x @ weight + bias, weight (in, out)) whose weight is int8 with per-output
    scales: buffers weight_int8 (out, in), scale (out,), bias (out,) or None."""

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(cls, linear: nn.Module) -> Int8Linear:
        """From gptlab's Linear (weight stored (in, out))."""
        q, scale = quantize(linear.weight.t())
        return cls(q, scale, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        y = int8_matmul(x2, self.weight_int8, self.scale, self.bias)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 weights"
