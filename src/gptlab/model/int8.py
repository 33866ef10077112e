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
    run(x.data_ptr(), q.data_ptr(), scale.data_ptr(),
        None if bias is None else bias.data_ptr(), y.data_ptr(), M, K, q.size(0))  # fmt: skip
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


# ----------------------------------------------------------------------------- on disk

PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def is_quantized(hf_config: dict) -> bool:
    """Whether a config.json describes an int8 folder written by `save_tensors`."""
    extra = hf_config.get("gptlab")
    return isinstance(extra, dict) and extra.get("quantization") == "int8"


def save_tensors(model) -> dict[str, torch.Tensor]:
    """A model prepared with quantize="int8" -> the tensors of its model.safetensors: int8
    weights and float32 scales for every projection and the head, float32 for the rest (the
    embedding tables, LayerNorms and biases)."""
    if not isinstance(model.lm_head, Int8Linear):
        raise ValueError("not an int8 model (prepare_for_decoding(model, quantize='int8'))")
    out = {}
    for key, tensor in model.state_dict().items():
        if key == "transformer.wte.weight":
            tensor = tensor[: model.config.vocab_size]
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.float()  # the float parts are float32 on disk, whatever in memory
        out[key] = tensor.contiguous().clone()
    return out


def load_tensors(tensors: dict[str, torch.Tensor], config, source: str):
    """The tensors `save_tensors` wrote -> a GPT with Int8Linear projections and an int8
    head, as it was saved (nothing is quantised again). A missing, extra or misshapen tensor
    is a GptlabError naming it."""
    from gptlab.errors import GptlabError
    from gptlab.model.gpt import GPT

    def take(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        t = tensors.pop(key, None)
        if t is None:
            raise GptlabError(f"{source}: not a complete int8 checkpoint ({key} is missing)")
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise GptlabError(
                f"{source}: {key} is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}"
            )
        return t.contiguous()

    tensors = dict(tensors)
    C, V = config.n_embd, config.vocab_size
    with torch.device("meta"):
        model = GPT(config)
    shapes = {"attn.c_attn": (3 * C, C), "attn.c_proj": (C, C), "mlp.c_fc": (4 * C, C),
              "mlp.c_proj": (C, 4 * C)}  # fmt: skip
    for i, block in enumerate(model.transformer.h):
        for name in PROJECTIONS:
            prefix, (n_out, n_in) = f"transformer.h.{i}.{name}", shapes[name]
            q = take(f"{prefix}.weight_int8", (n_out, n_in), torch.int8)
            scale = take(f"{prefix}.scale", (n_out,), torch.float32)
            bias = take(f"{prefix}.bias", (n_out,), torch.float32) if config.bias else None
            parent, child = name.split(".")
            setattr(getattr(block, parent), child, Int8Linear(q, scale, bias))
    model.lm_head = Int8Linear(take("lm_head.weight_int8", (V, C), torch.int8),
                               take("lm_head.scale", (V,), torch.float32), None)  # fmt: skip
    rest = {}
    for key, param in model.state_dict().items():
        if key.endswith((".weight_int8", ".scale")) or (".c_" in key and key.endswith(".bias")):
            continue
        shape = tuple(param.shape)
        if key == "transformer.wte.weight":
            table = take(key, (V, C), torch.float32)
            rows = shape[0] - V  # a padded table: the extra rows are never predicted
            rest[key] = torch.cat([table, table.new_zeros(rows, C)]) if rows else table
        else:
            rest[key] = take(key, shape, torch.float32)
    if tensors:
        raise GptlabError(f"{source}: unexpected tensors {', '.join(sorted(tensors)[:3])}")
    model.load_state_dict(rest, strict=False, assign=True)
    return model.eval()
