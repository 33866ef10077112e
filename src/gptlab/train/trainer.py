"""The training loop: data -> model -> AdamW steps, evaluations, checkpoints, logs.

One optimizer step sees batch_size x grad_accum sequences (the global batch). Their window
starts come from one seeded generator; under torchrun each of N processes takes its own
grad_accum / N micro-batches of that same global batch, so N processes train on exactly what
one process would. Gradients are synchronised once per step, on the last micro-batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab.config import GPTConfig, TrainConfig, to_toml
from gptlab.data.corpus import BUILTIN
from gptlab.data.shards import META_FILE, PreparedData, prepare
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_text
from gptlab.model import GPT
from gptlab.train import checkpoint
from gptlab.train.distributed import Dist, broadcast_flag, cleanup, setup
from gptlab.train.optim import lr_at, make_optimizer


@dataclass
class TrainResult:
    out: Path
    step: int
    interrupted: bool
    last_val_loss: float | None
    best_val_loss: float | None
    step_seconds: list[float]  # wall time of each training step of this command (no evals)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GptlabError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptlabError("device=cuda, but no CUDA GPU is available")
    return device


def resolve_data(config: TrainConfig, out: Path, d: Dist, progress: bool) -> PreparedData:
    """A prepared folder as it is; a built-in name or text files prepared into OUT/data once
    (reused while source, tokenizer and split are unchanged)."""
    path = Path(config.data)
    if (path / META_FILE).is_file():
        return PreparedData(path)
    if config.data not in BUILTIN and not path.exists() and not config.data.startswith("hf:"):
        raise GptlabError(f"{config.data}: no such file or folder (nor a built-in corpus)")
    cache = out / "data"
    wanted = {"source": config.data, "val_fraction": config.val_fraction}
    # Fine-tuning reads text with the pretrained model's own tokenizer unless told otherwise.
    tokenizer = config.tokenizer
    if config.init_from != "scratch" and tokenizer == "char":
        tokenizer = config.init_from
    if d.is_main:
        meta_path = cache / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        same = all(meta.get(k) == v for k, v in wanted.items())
        same = same and meta.get("tokenizer_name", tokenizer) == tokenizer
        if not same:
            if cache.exists():
                shutil.rmtree(cache)
            prepare(config.data, cache, tokenizer, config.val_fraction, progress=progress)
            meta = json.loads(meta_path.read_text())
            meta["tokenizer_name"] = tokenizer
            atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    d.barrier()
    return PreparedData(cache)


class _StopRequest:
    """Ctrl-C or SIGTERM: finish the current step, save, exit cleanly. A second Ctrl-C
    interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(
    model_config: GPTConfig,
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    started: float | None = None,
) -> TrainResult:
    """Train (or resume) a run into config.out. `started` is when the command began, so that
    elapsed_s in metrics.jsonl counts data preparation and start-up too."""
    started = started or time.perf_counter()
    device = resolve_device(config.device)
    d = setup(device.type)
    try:
        return _train(model_config, config, device, d, resume, overwrite, progress, started)
    finally:
        cleanup(d)


def _train(model_config, config, device, d: Dist, resume, overwrite, progress, started):
    out = Path(config.out)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.grad_accum % d.world:
        raise GptlabError(
            f"grad_accum={config.grad_accum} must be a multiple of the {d.world} processes"
        )
    if config.dtype == "float16" and device.type != "cuda":
        raise GptlabError("dtype=float16 needs a CUDA GPU; use bfloat16 or float32")
    if d.is_main:
        _check_out(out, resume, overwrite)
    d.barrier()

    data = resolve_data(config, out, d, progress and d.is_main)
    tokenizer = data.tokenizer()

    # ---------------------------------------------------------------- model
    saved = None
    if resume:
        model, trainer_state, saved = checkpoint.load(out)
        model_config = model.config
    elif config.init_from != "scratch":
        model = GPT.from_pretrained(config.init_from)
        if model.config.vocab_size != data.vocab_size:
            raise GptlabError(
                f"{config.init_from} reads {model.config.vocab_size} ids, but the data was "
                f"tokenized with a vocabulary of {data.vocab_size}; prepare the data with the "
                "model's tokenizer (gptlab prepare --tokenizer MODEL)"
            )
        if model_config.block_size < model.config.block_size:
            model = _crop_block_size(model, model_config.block_size)
        model.config = model.config.replace(dropout=model_config.dropout)
        _set_dropout(model, model_config.dropout)
        model_config = model.config
    else:
        torch.manual_seed(config.seed)
        model_config = model_config.replace(vocab_size=data.vocab_size)
        model = GPT(model_config)
    data.check_block_size(model_config.block_size)
    model.to(device)
    model.train()

    optimizer = make_optimizer(model, config, device.type)
    scaler = torch.amp.GradScaler("cuda", enabled=config.dtype == "float16")
    data_gen = torch.Generator().manual_seed(config.seed)
    step, tokens_seen, best_val, elapsed_before = 0, 0, math.inf, 0.0
    torch.manual_seed(config.seed + d.rank)  # dropout differs per rank, repeatably
    if saved is not None:
        optimizer.load_state_dict(trainer_state["optimizer"])
        data_gen.set_state(trainer_state["data_generator"])
        torch.set_rng_state(trainer_state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in trainer_state:
            torch.cuda.set_rng_state(trainer_state["cuda_rng"], device)
        if "scaler" in trainer_state and config.dtype == "float16":
            scaler.load_state_dict(trainer_state["scaler"])
        step, tokens_seen = saved["step"], saved["tokens"]
        best_val = saved.get("best_val_loss") or math.inf
        elapsed_before = saved.get("elapsed_s", 0.0)

    compiled = torch.compile(model) if config.compile else model
    ddp = compiled
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(
            compiled, device_ids=[d.local_rank] if device.type == "cuda" else None
        )

    if d.is_main:
        atomic_write_text(out / "train.toml", to_toml(model_config, config))
    autocast = _autocast(device, config.dtype)
    micro_per_rank = config.grad_accum // d.world
    T, B = model_config.block_size, config.batch_size
    tokens_per_step = B * config.grad_accum * T

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - started

    def save(last_val: float | None) -> None:
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "data_generator": data_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if device.type == "cuda":  # dropout on a GPU draws from the GPU's generator
            trainer_state["cuda_rng"] = torch.cuda.get_rng_state(device)
        if config.dtype == "float16":
            trainer_state["scaler"] = scaler.state_dict()
        state = {
            "step": step,
            "tokens": tokens_seen,
            "best_val_loss": None if math.isinf(best_val) else best_val,
            "last_val_loss": last_val,
            "elapsed_s": elapsed(),
        }
        checkpoint.save(out, model, trainer_state, state, tokenizer)

    log = _Logger(out, d.is_main, progress, config.max_iters, step)
    last_val = None
    interrupted = False
    step_seconds: list[float] = []
    with _StopRequest() as stop:
        while step < config.max_iters:
            t_step = time.perf_counter()
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            starts = data.window_starts("train", B * config.grad_accum, T, data_gen)
            mine = starts.view(config.grad_accum, B)[d.rank * micro_per_rank :][:micro_per_rank]
            loss_sum = torch.zeros((), device=device)
            for micro, micro_starts in enumerate(mine):
                x, y = data.windows("train", micro_starts, T)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                last = micro == micro_per_rank - 1
                sync = contextlib.nullcontext() if last or not d.enabled else ddp.no_sync()
                with sync:
                    with autocast:
                        loss = ddp(x, targets=y).loss / micro_per_rank
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
            if config.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            train_loss = loss_sum.item()
            if not math.isfinite(train_loss):
                raise GptlabError(
                    f"the loss became {train_loss} at step {step}; stopped without saving "
                    f"(the last good checkpoint in {out / checkpoint.CHECKPOINT_DIR} is intact). "
                    "Try a lower lr, grad_clip=1.0, or float32"
                )
            step_seconds.append(time.perf_counter() - t_step)
            log.step(step, train_loss, lr, tokens_per_step / step_seconds[-1])

            stopping = broadcast_flag(d, stop.requested, device)
            if step % config.eval_interval == 0 or step == config.max_iters or stopping:
                if d.is_main:
                    losses = _estimate_loss(model, data, config, T, device, autocast, step)
                    last_val = losses["val"]
                    if not math.isfinite(last_val):
                        raise GptlabError(f"the validation loss became {last_val} at step {step}")
                    improved = last_val < best_val
                    best_val = min(best_val, last_val)
                    log.evaluation(step, losses, lr, tokens_seen, elapsed())
                    save(last_val)
                    if improved:
                        checkpoint.save_best(out, tokenizer)
                d.barrier()
            if stopping:
                interrupted = step < config.max_iters
                break
    log.close()
    if d.is_main and not interrupted:
        _plot_losses(out)
    best = None if math.isinf(best_val) else best_val
    return TrainResult(out, step, interrupted, last_val, best, step_seconds)


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise GptlabError(f"{out}: exists and is not a folder")
    if resume:
        if not (out / checkpoint.CHECKPOINT_DIR).is_dir():
            raise GptlabError(f"{out}: no checkpoint to resume from")
        return
    if out.exists() and checkpoint.is_run_folder(out):
        if not overwrite:
            raise GptlabError(
                f"{out} holds another run; pass --resume to continue it or --overwrite to "
                "replace it"
            )
        for name in ("checkpoint", "best", "tb", "metrics.jsonl", "loss.png", "train.toml"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise GptlabError(f"{out}: cannot write there ({e.strerror or e})") from None


def _autocast(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


@torch.no_grad()
def _estimate_loss(model, data, config, T, device, autocast, step) -> dict[str, float]:
    """Mean loss over eval_iters batches of each split. The batches come from a generator
    seeded by (seed, step), so evaluating never disturbs training's random streams."""
    model.eval()
    out = {}
    for i, split in enumerate(("train", "val")):
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 2 + i)
        losses = []
        for _ in range(config.eval_iters):
            starts = data.window_starts(split, config.batch_size, T, gen)
            x, y = data.windows(split, starts, T)
            with autocast:
                losses.append(model(x.to(device), targets=y.to(device)).loss.float().item())
        out[split] = sum(losses) / len(losses)
    model.train()
    return out


def _crop_block_size(model: GPT, block_size: int) -> GPT:
    """Keep the first block_size position embeddings (fine-tuning on shorter sequences)."""
    model.transformer.wpe.weight = torch.nn.Parameter(model.transformer.wpe.weight[:block_size])
    model.config = model.config.replace(block_size=block_size)
    return model


def _set_dropout(model: GPT, p: float) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    for block in model.transformer.h:
        block.attn.dropout = p


class _Logger:
    """Progress bar, metrics.jsonl and TensorBoard, on rank 0 only."""

    def __init__(self, out: Path, main: bool, progress: bool, total: int, initial: int) -> None:
        self.main = main
        self.out = out
        self.bar = None
        self.writer = None
        if not main:
            return
        if progress:
            import sys

            from tqdm import tqdm

            interval = 0.5 if sys.stderr.isatty() else 30.0  # logs and pipes: a line per 30 s
            self.bar = tqdm(
                total=total, initial=initial, desc="train", unit="step", mininterval=interval
            )
        self._last_postfix = 0.0

    def step(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.perf_counter()
        if now - self._last_postfix > 0.5:  # refreshing text every step costs time
            self.bar.set_postfix(
                loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", refresh=False
            )
            self._last_postfix = now

    def evaluation(self, step, losses, lr, tokens, elapsed_s) -> None:
        record = {
            "step": step,
            "train_loss": round(losses["train"], 6),
            "val_loss": round(losses["val"], 6),
            "lr": lr,
            "tokens": tokens,
            "elapsed_s": round(elapsed_s, 3),
        }
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))
        for key in ("train_loss", "val_loss", "lr"):
            self.writer.add_scalar(key, record[key], step)
        self.writer.flush()
        message = (
            f"step {step}: train loss {record['train_loss']:.4f}, "
            f"val loss {record['val_loss']:.4f}, {elapsed_s:.1f}s"
        )
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _plot_losses(out: Path) -> None:
    """OUT/loss.png: train and val loss against step, from metrics.jsonl."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["train_loss"] for r in rows], marker="o", label="train")
    ax.plot(steps, [r["val_loss"] for r in rows], marker="o", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross entropy, nats)")
    ax.set_title(out.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png")
    plt.close(fig)
