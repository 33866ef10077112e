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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab.config import GPTConfig, TrainConfig, check_new_run, load_toml, to_toml
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_text
from gptlab.hardware import resolve_device, resolve_dtype
from gptlab.model import GPT
from gptlab.train import checkpoint, faults, mfu, runfolder, sharding
from gptlab.train.budget import Budget
from gptlab.train.distributed import (
    Dist,
    all_mean,
    any_rank,
    cleanup,
    gather_objects,
    on_main,
    setup,
)
from gptlab.train.evaluation import Evaluation
from gptlab.train.metrics import Logger, plot_losses
from gptlab.train.optim import lr_at, make_optimizer
from gptlab.train.parallel import parallelize
from gptlab.train.rundata import resolve_data

# torch >= 2.5 names it torch.OutOfMemoryError (for every device); before, CUDA's only
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


@dataclass
class TrainResult:
    out: Path
    step: int
    interrupted: bool
    last_val_loss: float | None
    best_val_loss: float | None
    step_seconds: list[float]  # wall time of each training step of this command (no evals)
    dtype: str = "float32"  # the dtype the run trained in (auto resolved)
    main: bool = True  # whether this process reports (rank 0 under torchrun)


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
    if not resume:  # (as the command line checks a new run's final settings)
        check_new_run(config)
    device = resolve_device(config.device)
    requested = config.dtype
    config = dataclasses.replace(config, dtype=resolve_dtype(config.dtype, device))
    threads_before = torch.get_num_threads()
    d = setup(device.type, cpu_tensors_too=config.cpu_offload and config.parallel == "fsdp")
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
        result = _train(model_config, config, device, d, resume, overwrite, progress, started)
        # no rank tears its connections down while another still talks (a gloo peer that
        # lost its partner mid-teardown once aborted: "terminate called without an active
        # exception"); not on an error, where the others may never arrive
        d.barrier()
        return result
    except (_OUT_OF_MEMORY, RuntimeError) as e:
        if not isinstance(e, _OUT_OF_MEMORY) and "can't allocate memory" not in str(e):
            raise  # (a CPU allocation failure is a RuntimeError)
        advice = "parallel=fsdp under torchrun, " if config.parallel == "ddp" else ""
        raise GptlabError(
            f"out of memory on {device} (batch_size={config.batch_size}); try {advice}"
            "activation_checkpointing=true, or a smaller batch_size with a larger grad_accum "
            "(files already saved are unchanged)"
        ) from None
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
    created: Path | None = None  # the outermost folder this run makes, if any

    def remove_if_unsaved() -> None:
        """A run this command created that never saved a checkpoint leaves no folder."""
        saved = any((out / n).exists() for n in (checkpoint.CHECKPOINT_DIR, checkpoint.OLD_DIR))
        if created is not None and not saved:
            shutil.rmtree(created, ignore_errors=True)

    with contextlib.ExitStack() as stack:  # undone in reverse: settle, unlock, tidy up

        def take_folder() -> None:
            nonlocal created
            runfolder.settle_now(out)  # a command killed while it replaced a run
            _check_out(out, resume, overwrite)
            if resume:
                _check_resume(model_config, config, out)
            missing = [p for p in (out, *out.absolute().parents) if not p.exists()]
            runfolder.claim(out)
            stack.enter_context(runfolder.RunLock(out))
            # only the command holding the lock may remove what it made: a second training
            # racing into the same new folder must not delete the first one's
            created = missing[-1] if missing else None
            stack.callback(remove_if_unsaved)
            # the run this one replaces goes only if this one has saved, else it comes back
            stack.callback(runfolder.settle_aside, out)

        on_main(d, take_folder)  # a refusal on rank 0 stops every rank with its message
        if resume:
            config = _follow_the_plan(config, out, d)
        return _train_locked(
            model_config, config, device, d, resume, overwrite, progress, started, out
        )


def _train_locked(model_config, config, device, d, resume, overwrite, progress, started, out):
    """Check the new run's data, model and settings; only then commit to OUT and train."""
    pending = resolve_data(config, out, d, progress and d.is_main, resume)
    try:
        data = pending.data
        faults.delay("data-read", d.rank)
        data.tokenizer()  # readable, and of the data's vocabulary
        model, model_config, saved = _build_model(model_config, config, data, out, resume)
        data.check_block_size(model_config.block_size)
        if not (config.cpu_offload and device.type == "cuda" and d.enabled):
            sharding.check_fits(model.num_params(), config, device, d.world)
    except BaseException:
        pending.discard()
        raise
    # Only now, with the new run's settings, data and model sound, does anything change in
    # OUT: the previous run's files (there is one only if --overwrite was given, or one cut
    # short before its first checkpoint) move aside until this run saves its first
    # checkpoint, and the data moves in.
    if d.is_main and not resume:
        runfolder.set_aside(out)
    data = pending.commit(aside=None if resume else out / runfolder.ASIDE)
    d.barrier()  # every rank has read the checkpoint before rank 0 tidies it
    if d.is_main:
        runfolder.mark(out)
        if resume:
            _drop_metrics_after(out, saved[1]["step"])
            checkpoint.finish_interrupted_save(out, saved[1], data.tokenizer())
            _settle_snapshots(out, saved[1], config, data.tokenizer())
    run = _Run(model, model_config, config, data, saved, device, d, out, started)
    budget = Budget(config, started) if config.max_time > 0 and not resume else None
    return run.loop(budget, progress)


class _Run:
    """One run from its committed start to its last step. The pieces of nanoGPT's loop, each
    a method: `step` (one optimizer step), `evaluate_and_save` and `save` (rank 0's
    checkpointing), `replan` (the time budget), `loop` (them in order, with Ctrl-C)."""

    def __init__(self, model, model_config, config, data, saved, device, d, out, started):
        self.model, self.model_config, self.config, self.data = model, model_config, config, data
        self.device, self.d, self.out, self.started = device, d, out, started
        self.tokenizer = data.tokenizer()
        self.T = model_config.block_size
        # fsdp with one process has nothing to shard: it trains the plain model, and writes
        # checkpoints in the sharded format so that more processes can take the run over
        self.sharded = config.parallel == "fsdp" and d.enabled
        # under fsdp, bfloat16 is FSDP's mixed precision (sharding.shard), not autocast
        by_fsdp = self.sharded and config.dtype == "bfloat16"
        self.autocast = contextlib.nullcontext() if by_fsdp else _autocast(device, config.dtype)
        self.evaluation = Evaluation(
            model, data, config, self.T, device, self.autocast, d, self.sharded
        )
        if config.cpu_offload and not (self.sharded and device.type == "cuda") and d.is_main:
            print(
                "note: cpu_offload=true acts on CUDA under torchrun only; ignored here",
                file=sys.stderr,
                flush=True,
            )
        model.train()
        trainer_state = saved[0] if saved is not None else None
        full_moments = None  # a ddp checkpoint's AdamW state, for a run that now shards
        if trainer_state is not None and self.sharded and "optimizer" in trainer_state:
            full_moments = self._full_optimizer_state(trainer_state["optimizer"])  # on CPU
        self.net = parallelize(model, config, device, d, self.sharded)  # what the step calls
        self.optimizer = make_optimizer(model, config, device.type)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.dtype == "float16")
        self.data_gen = torch.Generator().manual_seed(config.seed)
        self.state = _State()
        torch.manual_seed(config.seed + d.rank)  # dropout differs per rank, repeatably
        if saved is not None:
            saved_state = saved[1]
            where = out / checkpoint.CHECKPOINT_DIR / "trainer.pt"
            try:
                self._restore_optimizer(trainer_state, full_moments)
                note = _restore(trainer_state, self.data_gen, self.scaler, device, config, d)
            except GptlabError:
                raise
            except (AttributeError, KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
                raise GptlabError(
                    f"{where}: damaged checkpoint ({type(e).__name__}: {str(e)[:120]}); the "
                    "previous weights are in model.safetensors"
                ) from None
            self.state.load(saved_state)
            if note and d.is_main:
                print(note, file=sys.stderr, flush=True)
        self.flops = mfu.Throughput(model_config, model, config, device, d.world)
        if saved is None:  # a resumed run records changed settings with its next checkpoint
            self.write_settings()

    def _full_optimizer_state(self, saved: dict) -> dict:
        """A checkpoint of an unsharded run (its AdamW state keyed by parameter number),
        resumed with parallel=fsdp: the state keyed by parameter name, whole, so that each
        rank can take its shards of it once the model is sharded."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        plain = make_optimizer(self.model, self.config, self.device.type)
        _check_optimizer_state(saved, plain)
        plain.load_state_dict(saved)
        options = StateDictOptions(full_state_dict=True)
        return get_optimizer_state_dict(self.model, plain, options=options)

    def _restore_optimizer(self, trainer_state: dict, full_moments: dict | None) -> None:
        if full_moments is not None:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True)
            set_optimizer_state_dict(self.model, self.optimizer, full_moments, options=options)
        elif "optimizer" in trainer_state:
            _check_optimizer_state(trainer_state["optimizer"], self.optimizer)
            self.optimizer.load_state_dict(trainer_state["optimizer"])
        else:  # a checkpoint with sharded AdamW state (parallel=fsdp wrote it)
            self.d.barrier()  # rank 0 has finished any interrupted save first
            folder = self.out / checkpoint.CHECKPOINT_DIR
            sharding.load_optimizer(folder, self.model, self.optimizer)

    def write_settings(self) -> None:
        if self.d.is_main:
            atomic_write_text(self.out / "train.toml", to_toml(self.model_config, self.config))

    def elapsed(self) -> float:
        return self.state.elapsed_before + time.perf_counter() - self.started

    # ------------------------------------------------------------------ the step

    def step(self) -> tuple[float, float]:
        """One optimizer step over the global batch -> (mean loss over ranks, lr)."""
        config, state = self.config, self.state
        lr = lr_at(state.step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.train_step()
        state.step += 1
        state.tokens += config.batch_size * config.grad_accum * self.T
        train_loss = all_mean(self.d, loss).item()  # NaN on any rank: NaN on all, all stop
        if not math.isfinite(train_loss):
            saved_dir = self.out / checkpoint.CHECKPOINT_DIR
            kept = (
                f"the last good checkpoint in {saved_dir} is intact"
                if saved_dir.is_dir()
                else "no checkpoint had been saved yet"
            )
            raise GptlabError(
                f"the loss became {train_loss} at step {state.step}; stopped without saving "
                f"({kept}). Try a lower lr, grad_clip=1.0, or float32"
            )
        return train_loss, lr

    def train_step(self) -> torch.Tensor:
        """One optimizer step over the global batch (this rank's micro-batches), gradients
        synchronised on the last micro-batch, clipped, applied -> the mean loss (a tensor)."""
        config, d, T = self.config, self.d, self.T
        B, micro_per_rank = config.batch_size, config.grad_accum // d.world
        starts = self.data.window_starts("train", B * config.grad_accum, T, self.data_gen)
        mine = starts.view(config.grad_accum, B)[d.rank * micro_per_rank :][:micro_per_rank]
        synced = self.model if self.sharded else self.net
        loss_sum = torch.zeros((), device=self.device)
        for micro, micro_starts in enumerate(mine):
            x, y = self.data.windows("train", micro_starts, T)
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            last = micro == micro_per_rank - 1
            with sharding.gradient_sync(synced, self.sharded, d.enabled, last):
                with self.autocast:
                    loss = self.net(x, targets=y).loss / micro_per_rank
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum

    # ------------------------------------------------------------------ checkpoints

    def save(self, last_val: float | None, rngs: list[dict], evaluated: bool = False) -> None:
        """The checkpoint (every rank calls: under fsdp each writes its optimizer shards)."""
        trainer_state = {
            "data_generator": self.data_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "rng_per_rank": rngs,  # every rank's dropout stream, in rank order
        }
        if self.config.parallel == "fsdp":
            trainer_state["sharded_optimizer"] = sharding.OPTIMIZER_DIR
        else:
            trainer_state["optimizer"] = self.optimizer.state_dict()
        if self.device.type == "cuda":  # dropout on a GPU draws from the GPU's generator
            trainer_state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.config.dtype == "float16":
            trainer_state["scaler"] = self.scaler.state_dict()
        state = self.state
        saved_state = {
            "step": state.step,
            "tokens": state.tokens,
            "best_val_loss": None if math.isinf(state.best_val) else state.best_val,
            "last_val_loss": last_val,
            "evaluated": evaluated,  # this step's checkpoint came with an evaluation
            "elapsed_s": self.elapsed(),
        }
        d, out, weights = self.d, self.out, self.model
        if self.config.parallel == "fsdp":
            on_main(d, functools.partial(checkpoint.begin, out))  # an empty .checkpoint.tmp
            sharding.save_optimizer(out / checkpoint.TMP_DIR, self.model, self.optimizer)
            if self.sharded:  # the weights, gathered on rank 0
                weights = sharding.consolidated(self.model, d.is_main)

        def write() -> None:
            begun = self.config.parallel == "fsdp"
            checkpoint.save(out, weights, trainer_state, saved_state, self.tokenizer, begun)
            runfolder.drop_aside(out)  # a run this one replaced goes once this one has saved
            self.write_settings()  # the settings that led to this checkpoint

        on_main(d, write)

    def evaluate(self, lr: float) -> tuple[float, bool]:
        """Losses of both splits (each rank evaluates its share of the batches) and a metrics
        row -> (val loss, whether it is the best so far)."""
        state = self.state
        losses = self.evaluation.losses(state.step)
        val = losses["val"]
        if not math.isfinite(val):  # the same sum on every rank: all stop together
            raise GptlabError(f"the validation loss became {val} at step {state.step}")
        improved = val < state.best_val
        state.best_val = min(state.best_val, val)
        speed = self.flops.take()
        on_main(
            self.d,
            lambda: self.log.evaluation(
                state.step, losses, lr, state.tokens, self.elapsed(), speed
            ),
        )
        return val, improved

    def checkpoint_all_ranks(self, last_val: float | None, lr: float, evaluate: bool):
        """Every rank hands rank 0 its random state; all evaluate (or not), then save, and
        best/ is refreshed if the loss improved."""
        rngs = gather_objects(self.d, _rng_states(self.device))
        improved = False
        if evaluate:
            last_val, improved = self.evaluate(lr)
        self.save(last_val, rngs, evaluated=evaluate)
        if improved:
            on_main(self.d, functools.partial(checkpoint.save_best, self.out, self.tokenizer))
        if evaluate and self.config.snapshots:
            step = self.state.step
            save = functools.partial(checkpoint.save_snapshot, self.out, step, self.tokenizer)
            on_main(self.d, save)
        return last_val

    # ------------------------------------------------------------------ the time budget

    def replan(self, budget: Budget, step_seconds: list[float]) -> None:
        """The first steps are timed; max_iters and the schedule are then fixed for good and
        recorded in train.toml, before any checkpoint can be written."""
        self.config, message = budget.plan(
            self.config,
            step_seconds,
            self.state.step,
            self.evaluation.seconds(),
            self.d,
            self.device,
        )
        self.log.set_total(self.config.max_iters)
        self.log.message(message)
        self.write_settings()

    # ------------------------------------------------------------------ the loop

    def loop(self, budget: Budget | None, progress: bool) -> TrainResult:
        d, state = self.d, self.state
        self.log = Logger(self.out, d.is_main, progress, self.config.max_iters, state.step)
        peak, source = self.flops.peak
        if peak is None:
            self.log.message(f"note: no MFU figure ({source})")
        last_val = None
        interrupted = False
        step_seconds: list[float] = []
        if self.config.snapshots and state.step == 0 and not self.sharded:  # the untrained
            save = functools.partial(  # weights, where "Watch it learn" starts
                checkpoint.save_snapshot, self.out, 0, self.tokenizer, self.model
            )
            on_main(d, save)
        try:  # the bar is closed whatever ends the loop (a NaN, Ctrl-C, a full disk)
            with _StopRequest() as stop:
                while state.step < self.config.max_iters:
                    t_step = time.perf_counter()
                    train_loss, lr = self.step()
                    step_seconds.append(time.perf_counter() - t_step)
                    faults.step_delay()
                    tokens = self.config.batch_size * self.config.grad_accum * self.T
                    self.flops.add(tokens, step_seconds[-1])
                    rate = tokens / step_seconds[-1]
                    self.log.step(state.step, train_loss, lr, rate, self.flops.mfu(rate))

                    stopping = any_rank(d, stop.requested, self.device)
                    # (any rank's readiness counts for all, so the ranks plan at the same step)
                    if budget is not None and any_rank(
                        d, budget.ready(state.step, step_seconds) or stopping, self.device
                    ):
                        self.replan(budget, step_seconds)
                        budget = None
                    config = self.config
                    due = state.step % config.eval_interval == 0 or state.step == config.max_iters
                    if stopping and not due:
                        # Ctrl-C: save the weights at once, without an evaluation, so that the
                        # command returns within a few seconds (a scheduled one still runs).
                        self.checkpoint_all_ranks(last_val, lr, evaluate=False)
                        interrupted = True
                        break
                    if due:
                        last_val = self.checkpoint_all_ranks(last_val, lr, evaluate=True)
                    if stopping:
                        interrupted = state.step < config.max_iters
                        break
        finally:
            self.log.close()
        if d.is_main:  # (after a Ctrl-C too: the curve so far, before the resume draws on)
            try:
                plot_losses(self.out)
            except KeyboardInterrupt:  # a second Ctrl-C: the checkpoint is saved, the
                if not interrupted:  # "Resume with" line matters more than the picture
                    raise
        best = None if math.isinf(state.best_val) else state.best_val
        return TrainResult(
            self.out,
            state.step,
            interrupted,
            last_val,
            best,
            step_seconds,
            self.config.dtype,
            d.is_main,
        )


def _check_same_vocabulary(model_dir: Path, data) -> None:
    """Data prepared with another vocabulary of the same size (a character swapped) would
    fine-tune the model on ids that mean other text."""
    from gptlab.tokenizers import Tokenizer

    try:
        theirs = Tokenizer.from_pretrained(model_dir)
    except GptlabError:  # weights without a vocabulary: the size is all there is to check
        return
    if not theirs.same_ids(data.tokenizer()):
        raise GptlabError(
            f"{model_dir}'s tokenizer and the data's give the same ids other text; prepare "
            f"the data with the model's tokenizer (gptlab prepare --tokenizer {model_dir})"
        )


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
        if Path(config.init_from).is_dir():  # (a hub name's vocabulary is what it is)
            _check_same_vocabulary(Path(config.init_from), data)
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


def _check_optimizer_state(saved: dict, optimizer: torch.optim.Optimizer) -> None:
    """AdamW's saved moments have the shapes of the parameters they belong to (a mismatch
    would reach a fused kernel unchecked, and crash the process)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise ValueError("no parameter groups")
    ids = [i for g in groups for i in g.get("params", [])]
    if len(ids) != len(params):
        raise ValueError(f"{len(ids)} parameters saved, the model has {len(params)}")
    state = saved.get("state")
    if not isinstance(state, dict):
        raise ValueError("no optimizer state")
    for i, p in zip(ids, params, strict=True):
        for name, value in state.get(i, {}).items():
            if name != "step" and (not isinstance(value, torch.Tensor) or value.shape != p.shape):
                raise ValueError(f"{name} of parameter {i} does not have its shape")


def _restore(trainer_state, data_gen, scaler, device, config, d) -> str | None:
    """The data generator and each rank's RNGs, as the checkpoint left them. Returns a note
    when the number of processes changed (the run goes on, but the dropout streams of ranks
    the checkpoint did not have start afresh from seed + rank)."""
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


# What a resume cannot change: the network's shape and the run's start, split and budget
# plan (vocab_size comes from the data, as in a new run)
RESUME_FIXED = ("init_from", "val_fraction", "tokenizer", "max_time")


def _check_resume(model_config: GPTConfig, config: TrainConfig, out: Path) -> None:
    """A resumed run trains as it was set up: the settings train.toml records for the shape,
    the data and the start may not differ (the CLI refuses them as key=value; a Python
    caller passes whole configs, so they are compared here), and data= may not name other
    data than the run's."""
    toml = out / "train.toml"
    if not toml.is_file():
        return
    recorded = load_toml(str(toml))
    # a fine-tuned run's network is the model it started from (only dropout was the caller's)
    shape = (
        ["dropout"]
        if recorded.get("init_from", "scratch") != "scratch"
        else [
            f.name
            for f in dataclasses.fields(GPTConfig)
            if f.name not in ("vocab_size", "padded_vocab_size")
        ]
    )
    given = {
        **{k: getattr(model_config, k) for k in shape},
        **{k: getattr(config, k) for k in RESUME_FIXED},
    }
    changed = [
        f"{k}={v} (the run's: {recorded[k]})"
        for k, v in given.items()
        if k in recorded and recorded[k] != v
    ]
    if changed:
        raise GptlabError(
            f"a resume continues the run as it was set up; {', '.join(changed)} cannot change "
            "(start a new run, or fine-tune from this one with init_from=RUN)"
        )
    _check_same_data(recorded.get("data"), config.data, out)


def _follow_the_plan(config: TrainConfig, out: Path, d: Dist) -> TrainConfig:
    """A resumed run of a time budget keeps the max_iters and schedule that max_time planned at
    its start, recorded in train.toml. The CLI reads them from there (max_iters=N then trains
    longer or shorter on the same schedule; lr_decay_iters= is refused); a Python caller who
    passes the settings the run began with (another lr_decay_iters than the plan's) gets the
    plan, and a line says so."""
    toml = out / "train.toml"
    recorded = load_toml(str(toml)) if toml.is_file() else {}
    planned = recorded.get("max_time", 0) > 0 and "lr_decay_iters" in recorded
    if planned and config.lr_decay_iters != recorded["lr_decay_iters"]:
        config = dataclasses.replace(
            config, max_iters=recorded["max_iters"], lr_decay_iters=recorded["lr_decay_iters"]
        )
        if d.is_main:
            print(
                f"note: resuming a max_time run on the plan in {toml}: max_iters="
                f"{config.max_iters}, lr_decay_iters={config.lr_decay_iters} (to train "
                "longer, pass those and a larger max_iters)",
                file=sys.stderr,
                flush=True,
            )
    return config


def _check_same_data(data: object, given: str, out: Path) -> None:
    if not isinstance(data, str) or data == given:
        return
    try:
        if os.path.samefile(data, given):
            return
    except OSError:  # either is missing here, or a built-in name
        pass
    raise GptlabError(
        f"--resume trains on the run's own data ({data}, prepared in {out / 'data'}); "
        f"data={given} cannot apply (start a new run, or fine-tune from this one with "
        "init_from=RUN)"
    )


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
            f"{out} holds another run; pass --resume to continue it or --overwrite to replace it"
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
        except ValueError:
            row = None
        at = row.get("step") if isinstance(row, dict) else None
        keep = isinstance(at, int) and not isinstance(at, bool) and at <= step
        if keep:
            kept.append(line)
        else:
            changed = True
    if changed:
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def _settle_snapshots(out: Path, state: dict, config: TrainConfig, tokenizer) -> None:
    """Resuming from step N: snapshots kept after N go (a crashed command's); the one of N
    itself, if N's checkpoint came with an evaluation, is made where a crash came between the
    checkpoint and it."""
    step = state["step"]
    checkpoint.drop_snapshots_after(out, step)
    missing = step not in checkpoint.snapshots(out)
    if config.snapshots and state.get("evaluated") and missing:
        checkpoint.save_snapshot(out, step, tokenizer)


def _autocast(device: torch.device, dtype: str):
    """bfloat16 / float16: autocast (weights stay float32); float32: nothing."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


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
