"""How the model is spread over the processes of a torchrun: parallel=ddp or parallel=fsdp.

ddp (DistributedDataParallel): every process holds the whole model, its gradients and
AdamW's two moments, and gradients are averaged by an all-reduce. Per process that is
4 + 4 + 8 = 16 bytes per parameter in float32 before any activation.

fsdp (FSDP2, `torch.distributed.fsdp.fully_shard`): each process keeps 1/N of every
parameter, gradient and moment. A block's full weights exist only while the block runs (an
all-gather before, freed after) and gradients are reduce-scattered back to their shards, so
per process it is about 16/N bytes per parameter plus one block's weights in flight. Each
Block is a unit of its own, then the root (embeddings, final LayerNorm and the tied head,
which stay one parameter).

Checkpoints under fsdp (see `save_optimizer` / `load_optimizer`): the weights are gathered to
rank 0 and written once, as the usual model.safetensors that `gptlab sample` and transformers
read; AdamW's moments (twice the weights' bytes) go through `torch.distributed.checkpoint`,
each rank writing its own shards. That format reshards on load, so a run saved by N processes
resumes on M.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from gptlab.config import TrainConfig
from gptlab.errors import GptlabError, first_line
from gptlab.model import GPT

OPTIMIZER_DIR = "optimizer"  # inside a checkpoint folder: AdamW's state, sharded


BYTES_PER_PARAMETER = 16  # float32 weight, gradient and AdamW's two moments


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory on the device (a CPU: the machine's RAM), or None where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):  # not on this system
            return None
    return None


def check_fits(n_params: int, config: TrainConfig, device: torch.device, world: int) -> None:
    """Refuse, before any work, a run whose weights, gradients and AdamW state alone exceed
    the device's memory (on a CPU: all of this machine's processes together in its RAM),
    and say what would fit. Activations come on top, so passing this is no promise."""
    total = device_memory(device)
    if total is None:
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    shards = world if config.parallel == "fsdp" else 1
    need = BYTES_PER_PARAMETER * n_params * local / shards
    if need <= total:
        return
    where = "this machine's RAM" if device.type == "cpu" else f"{device}'s memory"
    if config.parallel == "ddp":
        advice = "parallel=fsdp under torchrun shares them out (each process keeps 1/N)"
    else:
        advice = "more processes (each keeps 1/N), or cpu_offload=true on CUDA"
    raise GptlabError(
        f"{n_params / 1e6:,.0f}M parameters need {need / 2**30:.1f} GiB for weights, gradients "
        f"and AdamW state (16 bytes each, parallel={config.parallel}), more than "
        f"{where} ({total / 2**30:.1f} GiB): {advice}"
    )


def shard(model: GPT, config: TrainConfig, device: torch.device) -> None:
    """fully_shard each block, then the whole model, in place (its parameters become DTensors
    holding this rank's rows). dtype=bfloat16: blocks compute in bfloat16 from float32 shards
    and gradients are reduced in float32 (FSDP's mixed precision, instead of autocast)."""
    try:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    except ImportError:  # FSDP2 is public from torch 2.6
        raise GptlabError(
            f"parallel=fsdp needs torch >= 2.6 (FSDP2's fully_shard); this is torch "
            f"{torch.__version__}: upgrade it, or use parallel=ddp"
        ) from None

    kwargs = {}
    if config.dtype == "bfloat16":
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32
        )
    if config.cpu_offload and device.type == "cuda":
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for block in model.transformer.h:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


def reshard(model: nn.Module) -> None:
    """After forward passes without a backward (evaluation): free the root's gathered weights.
    FSDP keeps the root's full weights after its forward, for the backward that usually
    follows; its parameters are then not the sharded ones the optimizer holds."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.reshard()


def gradient_sync(net: nn.Module, sharded: bool, enabled: bool, sync: bool):
    """A context for one micro-batch's backward. DDP exchanges gradients only on the last
    micro-batch of a step (`sync`); the others accumulate locally. Sharded, every micro-batch
    reduce-scatters: skipping it would keep whole, unsharded gradients between micro-batches,
    4 bytes per parameter on every process. enabled: more than one process."""
    if sharded or not enabled or sync:
        return contextlib.nullcontext()
    return net.no_sync()


def consolidated(model: GPT, main: bool) -> GPT | None:
    """The sharded model's full weights as a plain GPT on rank 0's CPU (None elsewhere).
    Every rank must call it: the shards are gathered."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    if not main:
        return None
    with torch.device("meta"):
        plain = GPT(model.config)
    plain.load_state_dict(full, assign=True)
    plain.lm_head.weight = plain.transformer.wte.weight  # tied again after assign
    return plain


def save_optimizer(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """AdamW's state into folder/optimizer, each rank writing its shards (every rank calls)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer)
    try:
        with _quiet():
            dcp.save({"optimizer": state}, checkpoint_id=folder / OPTIMIZER_DIR)
    except _errors() as e:  # DCP raises the same error on every rank
        raise GptlabError(
            f"{folder}: could not write the sharded optimizer state ({_failure(e)}); the "
            "previous checkpoint is intact"
        ) from None


def load_optimizer(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load folder/optimizer into this run's optimizer, whatever number of processes wrote it
    (DCP reads each rank's part of every tensor; one process reads them whole)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}  # shapes to fill
    try:
        with _quiet():
            dcp.load(state, checkpoint_id=folder / OPTIMIZER_DIR)
    except _errors() as e:
        raise GptlabError(
            f"{folder / OPTIMIZER_DIR}: damaged checkpoint ({_failure(e)}); the weights are "
            "in model.safetensors"
        ) from None
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optimizer"])


def _errors() -> tuple[type[BaseException], ...]:
    """What a failed DCP read or write raises (its CheckpointException is a BaseException)."""
    from torch.distributed.checkpoint.api import CheckpointException

    return (Exception, CheckpointException)


def _failure(e: BaseException) -> str:
    """The first failure of a distributed checkpoint operation, as one line."""
    failures = getattr(e, "failures", None)  # CheckpointException: {rank: its exception}
    if isinstance(failures, dict) and failures:
        e = next(iter(failures.values()))
        e = e[0] if isinstance(e, tuple) else e  # (exception, traceback)
    return f"{type(e).__name__}: {first_line(e)}"[:200] if str(e).strip() else type(e).__name__


@contextlib.contextmanager
def _quiet():
    """DCP warns when it runs without a process group (one process): that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield
