"""The KV cache of sampling: the keys and values of the positions a model has already read.

Its own module so that the sampling loop (gptlab.generate) and the network (gptlab.model.gpt)
both use it without importing each other.
"""

from __future__ import annotations

import torch

from gptlab.config import GPTConfig


class KVCache:
    """Keys and values of every layer for the positions seen so far, so that each new token
    costs one position instead of a re-run of the whole context.

    Preallocated per layer: k, v of shape (B, nh, max_len, hs); `length` positions are filled.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype) -> None:
        shape = (batch_size, config.n_head, max_len, config.head_size)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, nh, T, hs) after the filled positions; return all keys and values
        so far, (B, nh, length + T, hs). `advance` moves `length` once all layers are done."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > max_len {self.max_len}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n
