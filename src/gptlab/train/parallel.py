"""How a training run spreads a model over memory and processes, applied in one place, in a
fixed order (as torchtitan's parallelize functions do): activation checkpointing, FSDP2
sharding, the move to the device, torch.compile, DDP. The network (gptlab.model.gpt) knows
none of them.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from gptlab.config import TrainConfig
from gptlab.model.gpt import Block
from gptlab.train import sharding
from gptlab.train.distributed import Dist


class CheckpointedBlock(Block):
    """A Block that, while training with autograd, keeps only its input in the forward pass
    and recomputes itself in the backward pass (less memory, about a third more compute;
    dropout replays the same mask). Installed by a class swap: same parameters, same names."""

    def forward(self, x, attn_mask=None, cache=None, layer=0):
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x, attn_mask, cache, layer)
        run = super().forward
        return torch.utils.checkpoint.checkpoint(
            run, x, attn_mask, cache, layer, use_reentrant=False
        )


def parallelize(
    model: nn.Module, config: TrainConfig, device: torch.device, d: Dist, sharded: bool
) -> nn.Module:
    """Apply the run's settings to `model` (in place where they can be) and return what the
    training step calls: the model, compiled and/or wrapped in DDP as asked."""
    if config.activation_checkpointing:
        for block in model.transformer.h:
            if isinstance(block, Block) and not isinstance(block, CheckpointedBlock):
                block.__class__ = CheckpointedBlock
    if sharded:  # sharded while on the CPU: each device receives its shards only
        sharding.shard(model, config, device)
    model.to(device)
    net = torch.compile(model) if config.compile else model
    if d.enabled and not sharded:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            net, device_ids=[d.local_rank] if device.type == "cuda" else None
        )
    return net
