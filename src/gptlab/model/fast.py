"""Decoding fast on a CPU: the one home of the choices that make a one-token step quick.

A decoding step multiplies a few rows (one per sequence) by every weight matrix, so it is
bound by reading the weights from memory; PyTorch runs such a matrix-vector product on one
core. Two changes, both measured in benchmarks/matvec.py and benchmarks/generate.py:

- `SplitLinear`: a block's Linear that, for at most MAX_ROWS rows on a CPU without autograd,
  cuts the input dimension into one part per thread (`few_rows_matmul`). The network in
  model/gpt.py stays one matmul per projection; `prepare_for_decoding` swaps the class of its
  Linear modules in place (same parameters, same state_dict), and anything else (training,
  long inputs, GPUs) falls through to Linear's own forward.
- `DecodingHead`: the tied head as a contiguous (C, V) copy, faster for a few rows than the
  (V, C) embedding table, refreshed whenever the weights change.

Results differ from the plain model by float rounding only (a sum in another order): the
tests pin the tolerance and that greedy decoding gives the same tokens.
"""

from __future__ import annotations

import functools
import warnings

import torch

from gptlab.errors import GptlabError
from gptlab.model.gpt import GPT, Linear

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
    return x2.size(0) <= MAX_ROWS and x2.device.type == "cpu" and not torch.is_grad_enabled()


class SplitLinear(Linear):
    """Linear whose few-row products on a CPU use every thread (`few_rows_matmul`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if not _decoding(x2):
            return super().forward(x)
        y = few_rows_matmul(x2, self.weight)
        if self.bias is not None:
            y += self.bias
        return y.view(*x.shape[:-1], self.out_features)


def prepare_for_decoding(model: GPT, enabled: bool = True, quantize: str | None = None) -> GPT:
    """Swap the class of every block Linear to SplitLinear in place (enabled=False swaps it
    back). Idempotent; parameters, state_dict and training are untouched. Returns model.

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
    for module in model.modules():
        if enabled and type(module) is Linear:
            module.__class__ = SplitLinear
        elif not enabled and type(module) is SplitLinear:
            module.__class__ = Linear
    return model


class DecodingHead:
    """hidden (B, C) -> logits (B, vocab_size) for sampling. fast: a contiguous (C, V) copy of
    the tied head and, for a few rows on a CPU, the thread split; the copy is made again when
    the weights change (an optimizer step bumps the tensor's version). fast=False: the model's
    own head, the reference."""

    def __init__(self, model: GPT, fast: bool = True) -> None:
        self.model, self.fast = model, fast
        self._key: tuple | None = None
        self._weight: torch.Tensor | None = None

    def weight(self) -> torch.Tensor:
        """The (C, V) copy, made when the head's weights have changed since the last one."""
        w = self.model.lm_head.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if key != self._key:
            vocab = self.model.config.vocab_size  # never a padded id
            self._weight = w.detach()[:vocab].t().contiguous()
            self._key = key
        return self._weight

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return self.model.lm_head(hidden)[..., : self.model.config.vocab_size]
        if not isinstance(self.model.lm_head, Linear | torch.nn.Linear):  # int8 (or other)
            return self.model.lm_head(hidden)[..., : self.model.config.vocab_size]
        weight = self.weight()
        return few_rows_matmul(hidden, weight) if _decoding(hidden) else hidden @ weight
