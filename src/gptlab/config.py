"""Settings as dataclasses: the GPT-2 model shape (`GPTConfig`) and its named presets."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
import warnings
from dataclasses import dataclass

from gptlab.errors import GptlabError


def check_val_fraction(val_fraction: float) -> None:
    """The validation split's share of the tokens, for training and for `prepare` alike."""
    if not 0.0 < val_fraction < 1.0:  # also refuses nan
        raise GptlabError(f"val_fraction must be in (0, 1), got {val_fraction}")


# gptlab eval perplexity --method (eval/perplexity.py computes each)
DTYPES = ("float32", "bfloat16", "float16")  # what weights and arithmetic may be, besides auto
PERPLEXITY_METHODS = ("lm-eval", "hf-guide", "gptlab")
MAX_THREADS = 1024  # CPU threads a run may ask for (100,000 crashed torch's OpenMP pool)

GPT2_VOCAB_SIZE = 50257


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT-2 network.

    vocab_size: number of token ids the model reads and predicts.
    block_size: the longest sequence (Hugging Face calls it n_positions).
    padded_vocab_size: optional larger embedding table (e.g. 50304, a multiple of 64) for
        faster matrix products; the extra rows are never predicted and are stripped on export.
    """

    vocab_size: int = GPT2_VOCAB_SIZE
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    layer_norm_eps: float = 1e-5
    padded_vocab_size: int | None = None

    def __post_init__(self) -> None:
        # types first: a config.json edited by hand may hold "64", 2.5, null or true
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            _require(name, getattr(self, name), int)
        _require("padded_vocab_size", self.padded_vocab_size, int, none_ok=True)
        _require("dropout", self.dropout, float)
        _require("layer_norm_eps", self.layer_norm_eps, float)
        _require("bias", self.bias, bool)
        if not self.layer_norm_eps > 0:
            raise GptlabError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise GptlabError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise GptlabError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                "every head needs n_embd / n_head channels"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise GptlabError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.padded_vocab_size is not None and self.padded_vocab_size < self.vocab_size:
            raise GptlabError(
                f"padded_vocab_size={self.padded_vocab_size} is smaller than "
                f"vocab_size={self.vocab_size}"
            )

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def embedding_rows(self) -> int:
        """Rows of the token embedding table: padded_vocab_size if set, else vocab_size."""
        return self.padded_vocab_size or self.vocab_size

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """A named configuration (see `PRESETS`), with optional field overrides."""
        if name not in PRESETS:
            raise GptlabError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes) -> GPTConfig:
        return dataclasses.replace(self, **changes)


def _require(name: str, value, kind: type, none_ok: bool = False) -> None:
    """One clear line unless value is of the field's type (ints count as floats; a bool is not
    a number) and, for numbers, finite."""
    if value is None and none_ok:
        return
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
    if not ok:
        what = {bool: "true or false", int: "an integer", float: "a finite number"}[kind]
        raise GptlabError(f"{name} must be {what}, got {value!r}")


PRESETS: dict[str, GPTConfig] = {
    # The four published GPT-2 sizes (vocabulary 50257, 1024 positions).
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
    # Small models that train on a laptop CPU; vocab_size follows the tokenizer used.
    "shakespeare-char": GPTConfig(
        vocab_size=76, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0
    ),
    "shakespeare-char-speedrun": GPTConfig(
        vocab_size=65, block_size=64, n_layer=3, n_head=4, n_embd=128, dropout=0.0
    ),
    "tiny": GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64),
}


# ---------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    """Everything about a training run except the network's shape (that is GPTConfig).

    The global batch of one optimizer step is batch_size x grad_accum sequences of block_size
    tokens, however many processes share it. SETTINGS_HELP says what each field means
    (`gptlab train --list-settings` prints it).
    """

    data: str = "shakespeare"
    tokenizer: str = "char"
    val_fraction: float = 0.1
    out: str = "out/shakespeare-char"
    init_from: str = "scratch"
    batch_size: int = 12
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    max_iters: int = 2000
    eval_interval: int = 250
    eval_iters: int = 20
    max_time: float = 0.0
    dtype: str = "auto"
    compile: bool = False
    device: str = "auto"
    threads: int = 0
    seed: int = 1337
    parallel: str = "ddp"
    activation_checkpointing: bool = False
    cpu_offload: bool = False
    peak_tflops: float = 0.0
    snapshots: bool = False

    def __post_init__(self) -> None:
        for name, kind in field_types(TrainConfig).items():  # types first (TOML, key=value)
            if kind is str:
                if not isinstance(getattr(self, name), str):
                    raise GptlabError(f"{name} must be text, got {getattr(self, name)!r}")
            elif kind in (int, float, bool):
                _require(name, getattr(self, name), kind)
        for name in ("warmup_iters", "lr_decay_iters", "threads", "seed"):
            if getattr(self, name) < 0:
                raise GptlabError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.threads > MAX_THREADS:
            raise GptlabError(f"threads must be at most {MAX_THREADS}, got {self.threads}")
        if self.seed >= 2**63:  # torch's generators take a signed 64-bit seed
            raise GptlabError(f"seed must be below 2**63, got {self.seed}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise GptlabError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise GptlabError(f"{name} must be >= 0, got {getattr(self, name)}")
        positive = ("batch_size", "grad_accum", "max_iters", "eval_interval", "eval_iters")
        for name in positive:
            if getattr(self, name) < 1:
                raise GptlabError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise GptlabError(
                f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}"
            )
        if not 0 <= self.max_time < float("inf"):  # also refuses nan
            raise GptlabError(f"max_time must be seconds >= 0 (0 = none), got {self.max_time}")
        check_val_fraction(self.val_fraction)
        if self.lr <= 0 or self.min_lr < 0:
            raise GptlabError(f"lr must be > 0 and min_lr >= 0, got {self.lr}, {self.min_lr}")
        if self.parallel not in ("ddp", "fsdp"):
            raise GptlabError(f"parallel must be ddp or fsdp, got {self.parallel!r}")
        if self.parallel == "fsdp" and self.dtype == "float16":
            raise GptlabError(
                "parallel=fsdp trains in float32 or bfloat16 (float16 needs a gradient scaler "
                "that sharded training does not have here); use dtype=bfloat16"
            )
        if self.cpu_offload and self.parallel != "fsdp":
            raise GptlabError("cpu_offload=true needs parallel=fsdp")
        if not 0 <= self.peak_tflops < float("inf"):
            raise GptlabError(f"peak_tflops must be >= 0 (0 = auto), got {self.peak_tflops}")


# One line per setting, for `gptlab train --list-settings` and for readers of the dataclasses.
SETTINGS_HELP: dict[str, str] = {
    "vocab_size": "token ids the model reads and predicts (set from the data when training)",
    "block_size": "longest sequence the model reads (Hugging Face: n_positions)",
    "n_layer": "transformer blocks",
    "n_head": "attention heads per block (n_embd must divide by it)",
    "n_embd": "width of the residual stream",
    "dropout": "dropout probability while training, in [0, 1)",
    "bias": "biases in linear layers and LayerNorms (GPT-2: true)",
    "layer_norm_eps": "LayerNorm's epsilon",
    "padded_vocab_size": "a larger embedding table (e.g. 50304) for faster matmuls; unset = none",
    "data": "built-in corpus name, text file/folder, prepared data folder, or hf:NAME",
    "tokenizer": "char, gpt2, or a tokenizer folder (for text that needs preparing)",
    "val_fraction": "the last part of the token stream held out for validation, in (0, 1)",
    "out": "the run folder",
    "init_from": "scratch, or a pretrained name / model folder to fine-tune",
    "batch_size": "sequences per forward pass on each process",
    "grad_accum": "forward passes per optimizer step",
    "lr": "peak learning rate",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup_iters": "steps of linear warmup",
    "lr_decay_iters": "step at which the cosine decay reaches min_lr",
    "weight_decay": "AdamW weight decay, on 2-D weights only (matrices, embeddings)",
    "beta1": "AdamW beta1, in [0, 1)",
    "beta2": "AdamW beta2, in [0, 1)",
    "grad_clip": "clip the gradient norm to this; 0 = off",
    "max_iters": "optimizer steps",
    "eval_interval": "steps between evaluations and checkpoints",
    "eval_iters": "batches per evaluation",
    "max_time": "seconds for the whole command (the first steps are timed and max_iters fitted"
    "); 0 = none",
    "dtype": "auto (bfloat16 where the hardware computes it natively, else float32), float32, "
    "bfloat16, or float16 (CUDA only)",
    "compile": "torch.compile the model",
    "device": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps",
    "threads": "CPU threads for torch (at most 1024); 0 = torch's default",
    "seed": "random seed (data order, initialisation, dropout)",
    "parallel": "under torchrun: ddp (a full copy of the model per process) or fsdp (each "
    "process keeps 1/N of the weights, gradients and AdamW state)",
    "activation_checkpointing": "keep only each block's input and recompute the block in the "
    "backward pass: less memory, about a third more compute",
    "cpu_offload": "fsdp on CUDA: keep weights and AdamW state in CPU memory between uses",
    "peak_tflops": "the device's peak TFLOP/s for the MFU figure; 0 = a table for known GPUs, "
    "a matmul probe on CPU",
    "snapshots": "keep the weights of every evaluation (and of step 0) in OUT/snapshots/step-N, "
    "each a model folder: gptlab serve shows how the model learned",
}


def describe_settings(model: GPTConfig, train: TrainConfig) -> list[tuple[str, str, object, str]]:
    """Every setting as (section, name, value, help), in the order of the dataclasses."""
    return [
        (section, f.name, getattr(config, f.name), SETTINGS_HELP[f.name])
        for section, config in (("model", model), ("train", train))
        for f in dataclasses.fields(config)
    ]


# Training settings of the presets (the model side is PRESETS[name]). dtype is left at auto:
# bfloat16 autocast where the hardware has it natively, float32 elsewhere (hardware.py).
TRAIN_PRESETS: dict[str, dict] = {
    # The README's main job: the whole command in 5 minutes on any machine (max_time plans
    # max_iters from the first steps; the built-in corpus, 4.8M characters).
    "shakespeare-char": dict(
        out="out/shakespeare-char",
        batch_size=16,
        lr=5e-3,
        min_lr=5e-4,
        warmup_iters=100,
        lr_decay_iters=5000,
        max_iters=5000,
        max_time=300,
        eval_interval=250,
        eval_iters=20,
        snapshots=True,  # 3.3 MB a snapshot: the page's "Watch it learn"
    ),
    # Val loss <= 1.8857 on tinyshakespeare (nanoGPT's baby GPT after 2000 iterations) in
    # under half of nanoGPT's time: 3 layers, a high learning rate, one evaluation at the end
    # (benchmarks/shakespeare_char.py).
    "shakespeare-char-speedrun": dict(
        out="out/shakespeare-char-speedrun",
        batch_size=12,
        lr=6e-3,
        min_lr=6e-4,
        warmup_iters=50,
        lr_decay_iters=1200,
        max_iters=1200,
        eval_interval=1200,
        eval_iters=40,
    ),
    "tiny": dict(out="out/tiny", max_iters=50, eval_interval=25, eval_iters=5, batch_size=4),
}


# Names people bring from other trainers -> ours (only used to suggest).
ALIASES = {
    "learning_rate": "lr",
    "iters": "max_iters",
    "steps": "max_iters",
    "max_steps": "max_iters",
    "gradient_accumulation_steps": "grad_accum",
    "n_ctx": "block_size",
    "n_positions": "block_size",
}


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """["lr=1e-3", "n_layer=4"] -> {"lr": "1e-3", "n_layer": "4"} (values still text)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise GptlabError(f"expected key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


@functools.cache
def field_types(cls: type) -> dict[str, object]:
    """A config dataclass's fields -> their types, as objects (int, float, int | None), not
    the annotation text `from __future__ import annotations` leaves in dataclasses.fields."""
    return typing.get_type_hints(cls)


def _convert(name: str, text, kind):
    """A text (from the command line) or TOML value -> the field's type."""
    if not isinstance(text, str):
        value = text
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
    elif kind is bool:
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise GptlabError(f"{name} must be true or false, got {text!r}")
        value = lowered in ("true", "1", "yes")
    elif kind is int:
        try:
            if "e" in text.lower():  # 5e3 is 5000; 2.7e0 is not a whole number
                number = float(text)
                if not number.is_integer():
                    raise ValueError
                value = int(number)
            else:
                value = int(text)
        except (ValueError, OverflowError):
            raise GptlabError(f"{name} must be an integer, got {text!r}") from None
    elif kind is float:
        try:
            value = float(text)
        except ValueError:
            raise GptlabError(f"{name} must be a number, got {text!r}") from None
    elif kind == int | None:
        value = None if text.lower() in ("none", "") else _convert(name, text, int)
    else:
        value = text
    return value


# Settings that were removed, and why: a run's train.toml written before may still hold them.
RETIRED = {"log_interval": "it was never read: the progress bar updates itself"}


def check_new_run(train: TrainConfig) -> None:
    """What only the final settings of a new run can say (a preset, a --config file and
    key=value each set a part): the decay goes down to min_lr, never up. A resumed run keeps
    the plan it began with."""
    if train.min_lr > train.lr:
        raise GptlabError(
            f"min_lr={train.min_lr} is above lr={train.lr}: the cosine decay would raise the "
            "rate; lower min_lr (lr / 10 is usual)"
        )


def apply_settings(
    model: GPTConfig, train: TrainConfig, settings: dict
) -> tuple[GPTConfig, TrainConfig]:
    """Set fields of either config by name; an unknown name gets the closest known one."""
    import difflib

    model_fields = field_types(GPTConfig)
    train_fields = field_types(TrainConfig)
    model_changes, train_changes = {}, {}
    for key, text in settings.items():
        if key in RETIRED:  # in the train.toml of runs made before it went
            warnings.warn(f"{key} is no longer a setting ({RETIRED[key]}); ignored", stacklevel=2)
        elif key in model_fields:
            model_changes[key] = _convert(key, text, model_fields[key])
        elif key in train_fields:
            train_changes[key] = _convert(key, text, train_fields[key])
        else:
            known = [*model_fields, *train_fields]
            close = [ALIASES[key]] if key in ALIASES else difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise GptlabError(f"unknown setting {key!r}{hint}")
    return dataclasses.replace(model, **model_changes), dataclasses.replace(train, **train_changes)


def load_toml(path: str) -> dict:
    """A TOML file's settings, flattened: a [model] or [train] table is read like the top."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise GptlabError(f"{path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise GptlabError(f"{path}: not valid TOML ({e})") from None
    import difflib

    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in ("model", "train"):
            flat.update(value)
        elif isinstance(value, dict):  # a table: only [model] and [train] exist
            close = difflib.get_close_matches(key, ["model", "train"], n=1)
            hint = f"; did you mean [{close[0]}]?" if close else ""
            raise GptlabError(f"{path}: unknown section [{key}] (sections: [model], [train]){hint}")
        else:
            flat[key] = value
    return flat


def to_toml(model: GPTConfig, train: TrainConfig) -> str:
    """Both configs as TOML ([train] and [model] tables) that load_toml reads back."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)

    lines = ["[train]"]
    lines += [f"{k} = {value(v)}" for k, v in dataclasses.asdict(train).items()]
    lines += ["", "[model]"]
    lines += [f"{k} = {value(v)}" for k, v in dataclasses.asdict(model).items() if v is not None]
    return "\n".join(lines) + "\n"
