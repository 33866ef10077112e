"""Decoding fast on a CPU: the one home of the choices that make a one-token step quick.

A decoding step multiplies a few rows (one per sequence) by every weight matrix, so it is
bound by reading the weights from memory; PyTorch's CPU products for such shapes read them
well below the speed memory delivers (one core for one row; for 8 rows, compute-bound
kernels). Four changes, measured in benchmarks/matvec.py and benchmarks/generate.py:

- `DecodingLinear`: a block's Linear that, for at most MAX_ROWS rows on a CPU without
  autograd, multiplies with gptlab's compiled kernel (`gptlab.model.kernels.matmul`: each
  thread streams a band of the weight's rows once, for all rows of x together; float32, or
  bfloat16 widened to float32 in registers, so a bfloat16 model reads half the bytes on any
  CPU), or, where no kernel could be built, cuts the input dimension into one part per thread
  (`few_rows_matmul`). The network in model/gpt.py stays one matmul per projection;
  `prepare_for_decoding` swaps the class of its Linear modules in place (same parameters, same
  state_dict), and anything else (training, long inputs, GPUs) falls through to Linear's own
  forward.
- `DecodingAttention`: a block's attention whose step for one new position over the KV cache
  is one compiled call (`kernels.decode_attention`) instead of the half-dozen small PyTorch
  operations (the cache update, the head views, scaled_dot_product_attention) that each cost
  more in overhead than in arithmetic at this size.
- `DecodingHead`: the tied head with a contiguous (C, V) copy of the table, which the same
  products read faster than the (V, C) embedding table (C x V floats more while the model
  lives).
- `DecodingBlock`: a block whose one-position step is one compiled call
  (`kernels.block_step`: the LayerNorms, the products with each residual added in the same
  pass, attention and the GELU in one OpenMP region; float32, bfloat16 or int8 products),
  sparing the ~150 module calls, dropouts, adds and ~60 thread-team starts per token that
  cost GPT-2 small ~3 ms (a 12-layer model 48 wide, where little else is left: 1.88 -> 1.08
  ms per token on a 2-core AMD EPYC).

`prepare_for_decoding` installs them once, where a model is loaded for inference
(`gptlab.model.load`); sampling (gptlab.generate) runs whatever model it is given and never
changes it, so an unprepared model samples too, on the plain path.

Results differ from the plain model by float rounding only (a sum in another order): the
tests pin the tolerance and that greedy decoding gives the same tokens.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_hooks

from gptlab.errors import GptlabError
from gptlab.hardware import cpu_has_native_bf16
from gptlab.model import int8, kernels
from gptlab.model.cache import KVCache
from gptlab.model.gpt import GPT, MLP, Block, CausalSelfAttention, Linear, TanhGELU
from gptlab.model.int8 import Int8Linear

MAX_ROWS = 16  # up to this many rows a product is memory-bound enough for the split to pay
KERNEL_ROWS = 64  # longer inputs go through the kernel this many rows at a time


def few_rows_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (M, in) @ weight (in, out) for a few rows M, on a CPU, using every thread.

    Cutting the input dimension into k parts (free views of the weight's rows) turns the
    product into a batched product of k partial results, one per thread, summed at the end.
    Whether that pays depends on the shape: benchmarks/matvec.py (on a 2-core AMD EPYC, 1.27x
    over GPT-2 small's four matrices together, 2x for 3072 x 768, slower for 768 x 3072).
    """
    n_in = x.size(1)
    k = _splits(n_in, torch.get_num_threads())
    if k == 1 or x.dtype != torch.float32:  # bfloat16 kernels gain nothing from the split
        return x @ weight
    parts = x.view(x.size(0), k, n_in // k).transpose(0, 1)  # (k, M, in/k)
    return torch.bmm(parts, weight.view(k, n_in // k, weight.size(1))).sum(0)


@functools.cache
def _splits(n_in: int, threads: int) -> int:
    """The largest k <= threads (and <= 8) that divides n_in."""
    return max(k for k in range(1, min(threads, 8) + 1) if n_in % k == 0)


def _decoding(x2: torch.Tensor) -> bool:
    """A product (x2: (rows, in)) the fast path serves: on a CPU, no autograd, and few rows,
    or any number in bfloat16 where the CPU has no bfloat16 arithmetic (PyTorch emulates it
    there, ~15x slower than float32: the kernel's float32 sums are faster at any size)."""
    if not x2.is_cpu or torch.is_grad_enabled():
        return False
    if x2.size(0) <= MAX_ROWS:
        return True
    return x2.dtype is torch.bfloat16 and not cpu_has_native_bf16() and kernels.vectorised()


def decoding_matmul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x (..., in) @ weight (in, out) + bias for a few rows on a CPU: the compiled kernel
    where it can take them, else the thread split. Many rows (bfloat16 without native
    bfloat16, see _decoding) go KERNEL_ROWS at a time: the kernel's scratch holds every
    thread's sums of all rows, 400 MB for 1,024 rows of GPT-2's head."""
    rows = x.numel() // max(1, weight.size(0))
    if rows > KERNEL_ROWS:
        x2 = x.reshape(rows, weight.size(0))
        parts = [decoding_matmul(part, weight, bias) for part in x2.split(KERNEL_ROWS)]
        return torch.cat(parts).view(x.shape[:-1] + (weight.size(1),))
    y = kernels.matmul(x, weight, bias)
    if y is None:
        y = few_rows_matmul(x.reshape(-1, weight.size(0)), weight)
        if bias is not None:
            y += bias
        y = y.view(x.shape[:-1] + (weight.size(1),))
    return y


class DecodingAttention(CausalSelfAttention):
    """CausalSelfAttention whose one-new-position step over a KV cache on a CPU is one call
    (`kernels.decode_attention`: store k and v, softmax(q k^T / sqrt(hs)) v); everything else
    is CausalSelfAttention's own forward."""

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        if not self._kernel_takes(x, attn_mask, cache, layer):
            return super().forward(x, attn_mask, cache, layer)
        qkv = self.c_attn(x)  # (B, 1, 3C)
        mask = None if attn_mask is None else attn_mask[:, 0, 0, :]  # (B, past + 1)
        y = kernels.decode_attention(qkv, cache.k[layer], cache.v[layer], cache.length, mask)
        if y is None:  # (not expected after the checks above) the plain way, from the start
            return super().forward(x, attn_mask, cache, layer)
        return self.resid_dropout(self.c_proj(y))

    def _kernel_takes(self, x, attn_mask, cache, layer) -> bool:
        """One new position, cached past, eval mode (no dropout), no autograd, float32 or
        bfloat16 on a CPU, one mask for all heads, a built kernel: checked before c_attn runs,
        so that a step the kernel cannot take does not compute c_attn twice."""
        if cache is None or x.size(1) != 1 or self.training or torch.is_grad_enabled():
            return False
        k = cache.k[layer]
        if not (x.is_cpu and x.dtype is k.dtype and k.dtype in kernels.KERNEL_DTYPES):
            return False
        if k.size(1) != self.n_head or not 0 <= cache.length < k.size(2):
            return False
        if attn_mask is not None and (attn_mask.dim() != 4 or attn_mask.size(1) != 1):
            return False
        return kernels.library() is not None


class DecodingBlock(Block):
    """Block whose one-new-position step over a KV cache on a CPU is one call
    (`kernels.block_step`: the LayerNorms, the four products with each residual added in the
    product's own pass, attention over the cache and the GELU, in one OpenMP region), without
    the ~150 module calls, dropouts (identity in eval), separate adds and thread-team starts
    around them: on GPT-2 small those cost ~3 ms per token, as much as reading a fifth of the
    weights. Float32, bfloat16, or float32 with int8 products (Int8Linear). The same
    operations in the same order as Block.forward, so the same numbers to rounding; anything
    else (training, prompts, hooks on a part, masks the kernel does not read) is Block's own
    forward."""

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        parts = self._parts()
        if parts is None or not parts[1]._kernel_takes(x, attn_mask, cache, layer):
            return super().forward(x, attn_mask, cache, layer)
        ln_1, _, c_attn, attn_proj, ln_2, c_fc, mlp_proj = parts
        width = (x.size(-1),)
        if ln_1.normalized_shape != width or ln_2.normalized_shape != width:
            return super().forward(x, attn_mask, cache, layer)  # (Block's error, if any)
        weights, scales = [], []
        for product in (c_attn, attn_proj, c_fc, mlp_proj):
            if type(product) is Int8Linear:  # int8 (out, in), its scales, a float32 bias
                b = product._buffers  # (a dict lookup: the attribute lookup costs more)
                weights.append((b["weight_int8"], b["bias"]))
                scales.append(b["scale"])
            else:
                p = product._parameters
                weights.append((p["weight"], p.get("bias")))  # (no bias: not in the dict)
                scales.append(None)
        n1, n2 = ln_1._parameters, ln_2._parameters
        params = [n1["weight"], n1["bias"], *weights[0], *weights[1]]
        params += [n2["weight"], n2["bias"], *weights[2], *weights[3]]
        mask = None if attn_mask is None else attn_mask[:, 0, 0, :]  # (B, past + 1)
        eps = (ln_1.eps, ln_2.eps)
        k, v = cache.k[layer], cache.v[layer]
        y = kernels.block_step(x, params, k, v, cache.length, mask, eps, scales)
        if y is None:  # what the kernel does not read (a broadcast or additive mask): Block's way
            return super().forward(x, attn_mask, cache, layer)
        return y

    def _parts(self) -> tuple | None:
        """(ln_1, attn, c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj) where every part is
        the kind this step writes out (LayerNorm, the decoding or int8 Linear, the decoding
        attention, MLP with TanhGELU), no dropout is drawing (a dropout module set to train,
        as Monte Carlo dropout does) and nothing watches them (a forward hook on any part, or
        a global one, must see its call), else None."""
        if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
            return None
        modules = self._modules
        attn, mlp = modules["attn"], modules["mlp"]
        if type(attn) is not DecodingAttention or type(mlp) is not MLP:
            return None
        attn_parts, mlp_parts = attn._modules, mlp._modules
        drops = (attn_parts["resid_dropout"], mlp_parts["dropout"])
        if attn.training or mlp.training or any(d.training and d.p > 0 for d in drops):
            return None
        if type(mlp_parts["gelu"]) is not TanhGELU:
            return None
        if type(modules["ln_1"]) is not nn.LayerNorm or type(modules["ln_2"]) is not nn.LayerNorm:
            return None
        parts = (
            modules["ln_1"],
            attn,
            attn_parts["c_attn"],
            attn_parts["c_proj"],
            modules["ln_2"],
            mlp_parts["c_fc"],
            mlp_parts["c_proj"],
        )
        products = (parts[2], parts[3], parts[5], parts[6])
        if any(type(p) is not DecodingLinear and type(p) is not Int8Linear for p in products):
            return None
        watched = (mlp, mlp_parts["gelu"], *drops, *parts)
        if any(m._forward_hooks or m._forward_pre_hooks for m in watched):
            return None
        return parts


class DecodingLinear(Linear):
    """Linear whose few-row products on a CPU stream the weights at memory speed
    (`decoding_matmul`; in bfloat16 without native bfloat16, products of any size); everything
    else is Linear's own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _decoding(x.reshape(-1, self.in_features)):
            return super().forward(x)
        params = self._parameters  # a dict lookup: nn.Module's attribute lookup costs more
        return decoding_matmul(x, params["weight"], params.get("bias"))


class DecodingHead(nn.Module):
    """The tied head for sampling: logits = x @ W^T with W the (V, C) embedding table, read
    for a few rows on a CPU from a contiguous (C, V) copy made once here (`decoding_matmul`
    reads it faster than the table). The tied Parameter stays `weight`, so the state_dict and
    the tying are unchanged; the copy is a buffer that is not saved, made again when the
    weights change (an optimizer step, load_state_dict, .to(): the tensor's version or place
    changes; an edit through `weight.data` changes neither and is not seen)."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.weight = head.weight  # the embedding's Parameter: still one matrix, two uses
        self.register_buffer("weight_t", self.weight.detach().t().contiguous(), persistent=False)
        self._copied = self._stamp()

    def _stamp(self) -> tuple:
        w = self.weight
        return (w.data_ptr(), w._version, w.dtype, w.device)

    def _current(self) -> torch.Tensor:
        """The (C, V) copy, made again if the weights changed since it was made."""
        stamp = self._stamp()
        if stamp != self._copied:
            self.weight_t = self.weight.detach().t().contiguous()
            self._copied = stamp
        return self.weight_t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.size(-1))
        if _decoding(x2) and x2.dtype == self.weight.dtype:
            return decoding_matmul(x, self._current())
        return F.linear(x, self.weight)


def describe_decoding(model: GPT) -> str:
    """Which dtype and which products a model decodes with, in words (`/api/info`, reports)."""
    weight = model.transformer.wte.weight
    if not weight.is_cpu:
        return f"{str(weight.dtype).removeprefix('torch.')} on {weight.device.type}: PyTorch's"
    if isinstance(model.lm_head, Int8Linear):
        built = int8.kernel() is not None
        return "int8 weights, float32 sums: " + (
            kernels.describe() if built else "a dequantised float32 copy (no C kernel)"
        )
    dtype = str(weight.dtype).removeprefix("torch.")
    if not isinstance(model.lm_head, DecodingHead):
        return f"{dtype}: PyTorch's products (the model is not set up for decoding)"
    if weight.dtype not in kernels.KERNEL_DTYPES or kernels.library() is None:
        return f"{dtype}: PyTorch's products (no compiled kernel for it)"
    if weight.dtype is torch.bfloat16:
        return (
            f"bfloat16 weights widened to float32 in registers, float32 sums: {kernels.describe()}"
        )
    return f"float32: {kernels.describe()}"


def prepare_for_decoding(model: GPT, quantize: str | None = None) -> GPT:
    """Set a model up for sampling, in place, once (the inference loader,
    `gptlab.model.load`, does it): every block Linear becomes a DecodingLinear, every
    attention a DecodingAttention, every block a DecodingBlock (a class swap: same
    parameters, same state_dict, and with autograd on the same forward), and on a CPU the tied
    head a `DecodingHead`. Idempotent. Returns model.

    quantize="int8": every block projection and the head become `Int8Linear`s instead (weights
    int8 with one scale per output; the embedding lookup stays float32, so the head is no
    longer tied): the model is for inference from then on."""
    if quantize not in (None, "int8"):
        raise GptlabError(f"quantize must be int8 or none, got {quantize!r}")
    if quantize == "int8":
        _quantize_int8(model)
    swaps = {Linear: DecodingLinear, CausalSelfAttention: DecodingAttention, Block: DecodingBlock}
    for module in model.modules():
        fast = swaps.get(type(module))
        if fast is not None:
            module.__class__ = fast
    head = model.lm_head
    if type(head) is nn.Linear and head.weight.is_cpu:
        model.lm_head = DecodingHead(head)
    return model


def _quantize_int8(model: GPT) -> None:
    """Every block projection and the head as Int8Linear (see prepare_for_decoding)."""
    for block in model.transformer.h:
        for parent in (block.attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, Linear):
                    setattr(parent, name, Int8Linear.from_linear(child))
    if not isinstance(model.lm_head, Int8Linear):  # the head too; the embedding stays
        q, scale = int8.quantize(model.lm_head.weight[: model.config.vocab_size])
        model.lm_head = Int8Linear(q, scale, None)
    device = model.transformer.wte.weight.device
    if device.type != "cpu" or int8.kernel() is None:
        warnings.warn(
            f"int8 weights on {device} without gptlab's compiled kernel (it needs a CPU "
            "and a C compiler) multiply through a dequantised copy: slower than float32",
            stacklevel=3,
        )
