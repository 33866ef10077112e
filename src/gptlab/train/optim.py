"""AdamW with two parameter groups, and the learning-rate schedule (warmup, then cosine)."""

from __future__ import annotations

import math

import torch
from torch import nn

from gptlab.config import TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW where weight decay applies to 2-D tensors only (the matrices and embeddings that
    hold most of the capacity); biases and LayerNorm gains are left undecayed. The tied
    embedding/head matrix appears once (named_parameters yields a shared tensor once)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel is one call per step instead of a Python loop over tensors.
    fused = device_type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=1e-8, fused=fused
    )


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup over warmup_iters steps to lr, cosine decay to min_lr at lr_decay_iters,
    min_lr after that. `step` counts optimizer steps from 0."""
    if config.warmup_iters > 0 and step < config.warmup_iters:
        return config.lr * (step + 1) / config.warmup_iters
    if step >= config.lr_decay_iters:
        return config.min_lr
    span = max(1, config.lr_decay_iters - config.warmup_iters)
    progress = (step - config.warmup_iters) / span
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)
