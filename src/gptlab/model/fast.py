"""Decoding fast on a CPU: the one home of the choices that make a one-token step quick.

A decoding step multiplies a few rows (one per sequence) by every weight matrix, so it is
bound by reading the weights from memory; PyTorch's CPU products for such shapes read them
well below the speed memory delivers (one core for one row; for 8 rows, compute-bound
kernels). Three changes, measured in benchmarks/matvec.py and benchmarks/generate.py:

- `DecodingLinear`: a block's Linear that, for at most MAX_ROWS rows on a CPU without
  autograd, multiplies with gptlab's compiled kernel (`gptlab.model.kernels.f32_matmul`: each
  thread streams a band of the weight's rows once, for all rows of x together), or, where no
  kernel could be built, cuts the input dimension into one part per thread
  (`few_rows_matmul`). The network in model/gpt.py stays one matmul per projection;
  `prepare_for_decoding` swaps the class of its Linear modules in place (same parameters, same
  state_dict), and anything else (training, long inputs, GPUs) falls through to Linear's own
  forward.
- `DecodingAttention`: a block's attention whose step for one new position over the KV cache
  is one compiled call (`kernels.decode_attention`) instead of the half-dozen small PyTorch
  operations (the cache update, the head views, scaled_dot_product_attention) that each cost
  more in overhead than in arithmetic at this size.
- `DecodingHead`: the tied head as a contiguous (C, V) copy, which the same products read
  faster than the (V, C) embedding table. It is kept with the model between calls (C x V
  floats more while the model lives) and made again whenever the weights change.

Results differ from the plain model by float rounding only (a sum in another order): the
tests pin the tolerance and that greedy decoding gives the same tokens.
"""

from __future__ import annotations

import functools
import warnings
import weakref

import torch

from gptlab.errors import GptlabError
from gptlab.model import kernels
from gptlab.model.gpt import GPT, CausalSelfAttention, KVCache, Linear

MAX_ROWS = 16  # up to this many rows a product is memory-bound enough for the split to pay


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
    """A product the fast path serves: few rows, on a CPU, no autograd."""
    return x2.size(0) <= MAX_ROWS and x2.is_cpu and not torch.is_grad_enabled()


def decoding_matmul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x (..., in) @ weight (in, out) + bias for a few rows on a CPU: the compiled kernel
    where it can take them, else the thread split."""
    y = kernels.f32_matmul(x, weight, bias)
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
        """One new position, cached past, eval mode (no dropout), no autograd, float32 on a
        CPU, one mask for all heads, a built kernel: checked before c_attn runs, so that a
        step the kernel cannot take does not compute c_attn twice."""
        if cache is None or x.size(1) != 1 or self.training or torch.is_grad_enabled():
            return False
        k = cache.k[layer]
        if not (x.is_cpu and x.dtype is torch.float32 and k.dtype is torch.float32):
            return False
        if k.size(1) != self.n_head or not 0 <= cache.length < k.size(2):
            return False
        if attn_mask is not None and (attn_mask.dim() != 4 or attn_mask.size(1) != 1):
            return False
        return kernels.library() is not None


class DecodingLinear(Linear):
    """Linear whose few-row products on a CPU stream the weights at memory speed
    (`decoding_matmul`); everything else is Linear's own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() > MAX_ROWS * self.in_features or not x.is_cpu or torch.is_grad_enabled():
            return super().forward(x)
        params = self._parameters  # a dict lookup: nn.Module's attribute lookup costs more
        return decoding_matmul(x, params["weight"], params["bias"])


def prepare_for_decoding(model: GPT, enabled: bool = True, quantize: str | None = None) -> GPT:
    """Swap the class of every block Linear to DecodingLinear and of every attention to
    DecodingAttention, in place (enabled=False swaps them back and drops the head's copy).
    Idempotent; parameters, state_dict and training are untouched. Returns model.

    quantize="int8": every block projection and the head become `Int8Linear`s (weights int8
    with one scale per output; the embedding lookup stays float32, so the head is no longer
    tied). One way: the model is for inference from then on, and enabled=False does not undo
    it."""
    if quantize not in (None, "int8"):
        raise GptlabError(f"quantize must be int8 or none, got {quantize!r}")
    if quantize == "int8":
        from gptlab.model import int8
        from gptlab.model.int8 import Int8Linear
        from gptlab.model.int8 import quantize as to_int8

        for block in model.transformer.h:
            for parent in (block.attn, block.mlp):
                for name, child in list(parent.named_children()):
                    if isinstance(child, Linear):
                        setattr(parent, name, Int8Linear.from_linear(child))
        _HEAD_COPIES.pop(model, None)  # a float head copy from earlier sampling is dead now
        if not isinstance(model.lm_head, Int8Linear):  # the head too; the embedding stays
            q, scale = to_int8(model.lm_head.weight[: model.config.vocab_size])
            model.lm_head = Int8Linear(q, scale, None)
        device = model.transformer.wte.weight.device
        if device.type != "cpu" or int8.kernel() is None:
            warnings.warn(
                f"int8 weights on {device} without gptlab's compiled kernel (it needs a CPU "
                "and a C compiler) multiply through a dequantised copy: slower than float32",
                stacklevel=2,
            )
    swaps = {Linear: DecodingLinear, CausalSelfAttention: DecodingAttention}
    for module in model.modules():
        for plain, fast in swaps.items():
            if enabled and type(module) is plain:
                module.__class__ = fast
            elif not enabled and type(module) is fast:
                module.__class__ = plain
    if not enabled:
        _HEAD_COPIES.pop(model, None)
    return model


# model -> (what its head weight was when copied, the (C, V) copy); the copy holds no
# reference to the model, so a model nobody else holds is freed with its copy
_HEAD_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class DecodingHead:
    """hidden (B, C) -> logits (B, vocab_size) for sampling. fast: a contiguous (C, V) copy of
    the tied head (kept with the model between calls) and, for a few rows on a CPU,
    `decoding_matmul`; the copy is made again when the weights change (an optimizer step, a
    load_state_dict or .to() bumps the tensor's version or moves it; an edit through
    `weight.data` does neither and is not seen). fast=False: the model's own head, the
    reference."""

    def __init__(self, model: GPT, fast: bool = True) -> None:
        self.model, self.fast = model, fast

    def weight(self) -> torch.Tensor:
        """The (C, V) copy, made when the head's weights have changed since the last one."""
        w = self.model.lm_head.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        cached = _HEAD_COPIES.get(self.model)
        if cached is None or cached[0] != key:
            vocab = self.model.config.vocab_size  # never a padded id
            _HEAD_COPIES.pop(self.model, None)  # the old copy's memory first
            # the entry holds the weight's storage, so its address cannot be reused by new
            # weights while the key names it (same address, same version: a stale copy)
            cached = (key, w.detach()[:vocab].t().contiguous(), w.untyped_storage())
            _HEAD_COPIES[self.model] = cached
        return cached[1]

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return self.model.lm_head(hidden)[..., : self.model.config.vocab_size]
        if not isinstance(self.model.lm_head, Linear | torch.nn.Linear):  # int8 (or other)
            return self.model.lm_head(hidden)[..., : self.model.config.vocab_size]
        weight = self.weight()
        return decoding_matmul(hidden, weight) if _decoding(hidden) else hidden @ weight
