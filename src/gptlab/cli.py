"""The `gptlab` command: one sub-command per job. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gptlab.config import DTYPES
from gptlab.errors import GptlabError

RUN_DTYPES = ("auto", *DTYPES)  # auto: bfloat16 where the hardware computes it natively
HUB_HELP = (
    "run or model folder, or a hub name (gpt2, gpt2-medium, ...: OpenAI's weights, downloaded "
    "from the Hugging Face hub once)"
)


def _add_model_options(p: argparse.ArgumentParser, dtype_help: str) -> None:
    """--device, --dtype, --quantize: how sample, eval and serve load a model
    (`gptlab.model.load`)."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--dtype", choices=RUN_DTYPES, default="auto", help=dtype_help)
    p.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default="none",
        help="int8: weight-only int8 projections and head, float32 arithmetic (faster "
        "decoding on a CPU; docs/concepts.md section 17)",
    )


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless there is none or the text says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            default is not None
            and default is not False  # a flag's "off"
            and default != argparse.SUPPRESS
            and default != ""
            and "default" not in text
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (not usage + error) and exit code 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise GptlabError(f"{message} (see {self.prog} --help)")


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def _output_folder(
    out: str,
    overwrite: bool,
    writes: Sequence[str],
    mark: str | None = None,
    owned: Callable[[Path], None] | None = None,
) -> Path:
    """Check, before any work, that a command may write the files `writes` into OUT: OUT is
    new, empty, or holds only such files (replacing them takes --overwrite, unless the folder
    holds `mark`, the file by which a command that redraws without asking knows its own
    folder: a name alone proves nothing); a folder holding anything else is written to only
    with --overwrite, which replaces `writes` and touches nothing else. A training run's
    folder is refused, then whatever `owned(folder)` refuses (before --overwrite is offered)."""
    from gptlab.folders import check_not_inside_a_run, is_training_run

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise GptlabError(f"{folder}: exists and is not a folder")
    check_not_inside_a_run(folder)
    _check_can_write(folder)
    if not folder.is_dir():
        return folder
    if is_training_run(folder):
        raise GptlabError(f"{folder} is a training run's folder; write into another folder")
    if owned is not None:
        owned(folder)
    present = {p.name for p in folder.iterdir()}
    foreign = sorted(present - {*writes, mark})
    if foreign and not overwrite:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise GptlabError(
            f"{folder} holds files gptlab did not write ({shown}); choose a new or empty folder, "
            "or pass --overwrite to write into it (only gptlab's own files are replaced)"
        )
    ours = sorted(present & set(writes))
    if ours and not overwrite and not (mark and mark in present):
        raise GptlabError(f"{folder} already holds {', '.join(ours)}; pass --overwrite to replace")
    return folder


def _vocabulary_owner_check(model_too: bool) -> Callable[[Path], None]:
    return lambda folder: _check_ids_are_free(folder, model_too)


def _check_ids_are_free(folder: Path, model_too: bool) -> None:
    """Refuse to replace the vocabulary of prepared data and, with `model_too`, of a model in
    `folder`, even with --overwrite (their ids would then stand for other text); without it,
    a tokenizer that is not a model's (a convert replaces a model, not a vocabulary)."""
    from gptlab.data.shards import is_prepared_data
    from gptlab.tokenizers import TOKENIZER_FILES

    if not folder.is_dir():
        return
    if is_prepared_data(folder):
        raise GptlabError(
            f"{folder} holds prepared data, whose token ids are its tokenizer's; "
            "write into another folder"
        )
    weights = [n for n in ("config.json", "model.safetensors") if (folder / n).exists()]
    if model_too and weights:
        raise GptlabError(
            f"{folder} holds a model ({', '.join(weights)}), whose ids are its tokenizer's; "
            "train the tokenizer into another folder"
        )
    vocabulary = [n for n in TOKENIZER_FILES if (folder / n).exists()]
    if not model_too and vocabulary and not weights:
        raise GptlabError(
            f"{folder} holds a tokenizer ({', '.join(vocabulary)}) and no model; "
            "convert into another folder"
        )


def _check_can_write(folder: Path) -> None:
    """A file can be made in OUT (or the nearest folder above it that exists): asked before
    the work, not found out after it with a temporary file's name."""
    import tempfile

    base = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    try:
        fd, probe = tempfile.mkstemp(prefix=".gptlab-probe.", dir=base)
    except OSError as e:
        raise GptlabError(f"{folder}: cannot write there ({e.strerror or e})") from None
    os.close(fd)
    os.remove(probe)


# ----------------------------------------------------------------------------- info


def _model_config(name_or_path: str):
    """A preset name or a model folder -> (GPTConfig, where it came from)."""
    from gptlab.config import PRESETS, GPTConfig

    if name_or_path in PRESETS:
        return GPTConfig.preset(name_or_path), f"preset {name_or_path}"
    folder = Path(name_or_path)
    if not (folder / "config.json").is_file():
        raise GptlabError(
            f"{name_or_path}: neither a preset ({', '.join(PRESETS)}) nor a folder with config.json"
        )
    from gptlab.model.hf import read_config

    return read_config(folder), str(folder)


def add_info(sub) -> None:
    p = sub.add_parser("info", help="shape and parameter count of a preset or a model folder")
    p.add_argument(
        "model",
        help="preset name (gpt2, gpt2-medium, ...: the shape only, nothing is downloaded) or "
        "model folder",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from gptlab.model import GPT

    config, source = _model_config(args.model)
    with torch.device("meta"):  # shapes only: no memory, no time
        model = GPT(config)
    info = {
        "source": source,
        **dataclasses.asdict(config),
        "parameters": model.num_params(),
        "parameters_without_wpe": model.num_params(include_position_embedding=False),
    }
    if args.json:
        print(json.dumps(info))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            shown = (
                f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
            )
            print(f"{key:<{width}}  {shown}")
    return 0


# ----------------------------------------------------------------------------- convert


def add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="a Hugging Face folder, hub name or gptlab folder -> a folder both can load",
    )
    p.add_argument("model", help=HUB_HELP)
    p.add_argument("out", help="output folder (config.json + model.safetensors)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights' dtype on disk")
    p.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default="none",
        help="int8: weight-only int8 projections and head (gptlab's own format, loaded back "
        "as it is; transformers cannot read it)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing model in OUT")
    p.set_defaults(run=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    import shutil

    import torch

    from gptlab.model import GPT
    from gptlab.tokenizers import TOKENIZER_FILES, Tokenizer

    writes = ("config.json", "model.safetensors", *TOKENIZER_FILES)
    out = _output_folder(args.out, args.overwrite, writes, owned=_vocabulary_owner_check(False))
    from gptlab.model.load import load_model

    # the one loader's rules (int8 computes in float32); float16 is only stored, never
    # computed here, so the model is loaded in float32 and cast
    dtype = "float32" if args.dtype == "float16" else args.dtype
    model = load_model(args.model, "cpu", dtype, args.quantize, decoding=False)
    if args.dtype == "float16":
        from gptlab.model.int8 import Int8Linear

        if isinstance(model.lm_head, Int8Linear):
            raise GptlabError(
                f"{args.model} has int8 weights, which compute in float32; leave --dtype at float32"
            )
        model.to(torch.float16)
    with torch.device("meta"):  # counted on the float network (an int8 one holds buffers)
        n_params = GPT(model.config).num_params()
    try:
        tok = Tokenizer.from_pretrained(args.model)
    except GptlabError as e:  # weights without a vocabulary: convert them, and say so
        tok, missing = None, e
    if tok is not None:
        tok.check_model(model.config.vocab_size, args.model)
    created = [p for p in (out.absolute(), *out.absolute().parents) if not p.exists()]
    try:
        model.save_pretrained(out)
        if tok is not None:
            for name in TOKENIZER_FILES:  # the old vocabulary must not outlive an --overwrite
                (out / name).unlink(missing_ok=True)
            tok.save(out)
    except BaseException:  # a full disk, Ctrl-C: no half-written folder of this command's
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
        raise
    what = (
        "int8 weights (gptlab reads them; transformers cannot)"
        if args.quantize == "int8"
        else args.dtype
    )
    print(f"saved {n_params:,} parameters ({what}) to {out}")
    if tok is None:
        _say(f"gptlab: note: no tokenizer saved ({missing}); {out} cannot sample text until one is")
    return 0


# ----------------------------------------------------------------------------- tokenizer


def add_tokenizer(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a BPE vocabulary, or encode text with one")
    tsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    tsub.required = True
    t = tsub.add_parser("train", help="learn a byte-level BPE vocabulary from text files")
    t.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files or folders")
    t.add_argument("--vocab-size", type=int, required=True, help="ids in all (>= 256 + specials)")
    t.add_argument("--out", required=True, help="folder for vocab.json + merges.txt")
    t.add_argument(
        "--special",
        nargs="*",
        metavar="TOKEN",
        help="special tokens (default: <|endoftext|>; --special alone: none)",
    )
    t.add_argument("--pattern", choices=("gpt2", "gpt4"), default="gpt2", help="pre-tokenizer")
    t.add_argument("--overwrite", action="store_true", help="replace a vocabulary in OUT")
    t.set_defaults(run=cmd_tokenizer_train)
    t = tsub.add_parser("encode", help="print the ids (and pieces) of a text")
    t.add_argument("tokenizer", help="tokenizer folder, model folder or gpt2 hub name")
    t.add_argument("text")
    t.add_argument("--pieces", action="store_true", help="also print each id's text")
    t.set_defaults(run=cmd_tokenizer_encode)


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    import time

    from gptlab.data.corpus import iter_pieces, text_files
    from gptlab.tokenizers import TOKENIZER_FILES, train_bpe
    from gptlab.tokenizers.bpe import PATTERNS

    out = _output_folder(
        args.out, args.overwrite, TOKENIZER_FILES, owned=_vocabulary_owner_check(True)
    )
    files = text_files(args.input)
    size = 0

    def texts():  # streamed: pieces cut where the known patterns cut anyway (memory bounded)
        nonlocal size
        for text, _ in iter_pieces(files, 1 << 22 if args.pattern in PATTERNS else None):
            size += len(text.encode("utf-8", "surrogatepass"))
            yield text

    start = time.perf_counter()
    specials = args.special if args.special is not None else ["<|endoftext|>"]
    tok = train_bpe(texts(), args.vocab_size, specials, args.pattern)
    seconds = time.perf_counter() - start
    for name in TOKENIZER_FILES:  # an --overwrite leaves no file of the old vocabulary
        (out / name).unlink(missing_ok=True)
    tok.save(out)
    print(
        f"trained {tok.vocab_size} ids ({len(tok.merges)} merges) on {size:,} bytes from "
        f"{len(files)} file(s) in {seconds:.1f}s -> {out}"
    )
    if tok.vocab_size < args.vocab_size:
        _say(f"gptlab: note: the corpus ran out of pairs before {args.vocab_size} ids")
    return 0


def cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    from gptlab.tokenizers import Tokenizer

    tok = Tokenizer.from_pretrained(args.tokenizer)
    ids = tok.encode(args.text)
    print(json.dumps(ids))
    if args.pieces:
        print(json.dumps([tok.decode([i]) for i in ids], ensure_ascii=False))
    return 0


# ----------------------------------------------------------------------------- data, training


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize text into train/val token files")
    p.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="text files/folders (default: the "
        "built-in Shakespeare), or hf:NAME[:SPLIT[:COLUMN]] with `datasets` installed",
    )
    p.add_argument("--tokenizer", default="char", help="char, gpt2, or a tokenizer folder")
    p.add_argument("--out", default="data/shakespeare-char", help="output folder")
    p.add_argument("--val-fraction", type=float, default=0.1, help="last part of the stream")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument(
        "--column", default="text", help="the text column of .jsonl(.gz) and .parquet inputs"
    )
    p.add_argument(
        "--shard-tokens",
        type=int,
        default=100_000_000,
        help="tokens per shard file (default 100 M)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace prepared data in OUT")
    p.set_defaults(run=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    from gptlab.data import prepare
    from gptlab.data.shards import PROGRESS_FILE

    out = Path(args.out)
    try:
        data = prepare(
            args.input or "shakespeare",
            out,
            args.tokenizer,
            args.val_fraction,
            overwrite=args.overwrite,
            workers=args.workers,
            progress=True,
            column=args.column,
            shard_tokens=args.shard_tokens,
        )
    except KeyboardInterrupt:
        place = out.absolute()
        if (place.parent / f".{place.name}.prepare.tmp" / PROGRESS_FILE).is_file():
            _say("gptlab: interrupted; the tokens so far are kept: the same command continues")
            return 130
        raise
    m = data.meta
    shards = len(m["shards"])
    print(
        f"{m['source']}: {m['documents']:,} document(s), {m['characters']:,} characters -> "
        f"{m['train_tokens']:,} train + {m['val_tokens']:,} val tokens ({m['tokenizer']}, "
        f"vocabulary {m['vocab_size']:,}, {m['dtype']}) in {out}, "
        f"{shards} shard{'s' if shards > 1 else ''}"
    )
    return 0


def _resume_settings(args: argparse.Namespace, overrides: dict):
    """A run's train.toml, with the key=value settings a resume may change."""
    import dataclasses

    from gptlab.config import GPTConfig, TrainConfig, apply_settings, load_toml

    # what cannot apply to a run that exists already is refused, not ignored
    given = [
        flag
        for flag, value in (
            ("--preset", args.preset),
            ("--config", args.config),
            ("--data", args.data),
            ("--out", args.out),
            ("--overwrite", args.overwrite),
        )
        if value
    ]
    if given:
        raise GptlabError(
            f"--resume continues the run as it was set up, so {', '.join(given)} cannot "
            "apply (a setting may change with key=value, e.g. max_iters=N)"
        )

    # what the run's data, start and folder were (data=: the trainer refuses other data)
    fixed = ("init_from", "val_fraction", "tokenizer", "out")
    refused = [k for k in overrides if k in fixed]
    if refused:
        raise GptlabError(
            f"--resume continues the run's data and start; {', '.join(refused)} cannot "
            "change (start a new run, or fine-tune from this one with init_from=RUN)"
        )
    shape = [k for k in overrides if k in {f.name for f in dataclasses.fields(GPTConfig)}]
    if shape:
        raise GptlabError(
            f"--resume keeps the network's shape; {', '.join(shape)} cannot change "
            "(start a new run, or fine-tune from this one with init_from=RUN)"
        )
    if "max_time" in overrides:  # the budget plans a run once, from its start
        raise GptlabError(
            "--resume follows the plan max_time made when the run began; to train longer "
            "or shorter, set max_iters=N"
        )
    from gptlab.train.runfolder import settle_now

    settle_now(Path(args.resume))  # after a killed --overwrite: the old run is back first
    toml = Path(args.resume) / "train.toml"
    if not toml.is_file():
        raise GptlabError(f"{args.resume}: not a training run (no train.toml)")
    model, train = apply_settings(GPTConfig(), TrainConfig(), load_toml(str(toml)))
    if train.max_time > 0 and "lr_decay_iters" in overrides:
        raise GptlabError(
            f"--resume follows the plan max_time made when the run began (lr_decay_iters="
            f"{train.lr_decay_iters}); to train longer or shorter, set max_iters=N"
        )
    train = apply_settings(model, train, {"out": args.resume})[1]
    return apply_settings(model, train, overrides)


def _train_settings(args: argparse.Namespace):
    """Preset < --config file < --data/--out < key=value, or a run's train.toml for --resume."""
    from gptlab.config import (
        PRESETS,
        TRAIN_PRESETS,
        GPTConfig,
        TrainConfig,
        apply_settings,
        check_new_run,
        load_toml,
        parse_overrides,
    )

    overrides = parse_overrides(args.settings)
    if args.resume:
        return _resume_settings(args, overrides)
    args.preset = args.preset or "shakespeare-char"
    if args.preset not in PRESETS:
        raise GptlabError(f"unknown preset {args.preset!r}; known presets: {', '.join(PRESETS)}")
    model = GPTConfig.preset(args.preset)
    train = TrainConfig(**TRAIN_PRESETS.get(args.preset, {"out": f"out/{args.preset}"}))
    layers = [load_toml(args.config)] if args.config else []
    flags = {k: v for k, v in (("data", args.data), ("out", args.out)) if v is not None}
    for settings in [*layers, flags, overrides]:
        if "padded_vocab_size" in settings and "vocab_size" not in settings:
            # a new run's vocab_size is its data's (the trainer sets it): the preset's stands
            # in until then, lowered so that padded_vocab_size meets the data's vocabulary
            padded = apply_settings(model.replace(vocab_size=1), train, settings)[0]
            if padded.padded_vocab_size is not None:
                vocab = min(model.vocab_size, padded.padded_vocab_size)
                model = model.replace(padded_vocab_size=None, vocab_size=vocab)
        model, train = apply_settings(model, train, settings)
    check_new_run(train)
    if train.init_from != "scratch":  # the network's shape comes from the model it starts from
        import dataclasses

        given = {k for layer in [*layers, overrides] for k in layer}
        shape = sorted(
            given & {f.name for f in dataclasses.fields(GPTConfig)} - {"block_size", "dropout"}
        )
        if shape:
            raise GptlabError(
                f"init_from={train.init_from} takes the network's shape from that model; "
                f"{', '.join(shape)} cannot be set (block_size may shrink, dropout may change)"
            )
    return model, train


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune a GPT (the main job)")
    p.add_argument(
        "--preset",
        default=None,
        help="model + training preset (default: shakespeare-char); the gpt2 presets are shapes "
        "trained from scratch: to fine-tune OpenAI's weights, set init_from=gpt2",
    )
    p.add_argument("--config", metavar="FILE.toml", help="settings file ([model], [train])")
    p.add_argument("--data", help="prepared data folder, text file/folder, or 'shakespeare'")
    p.add_argument("--out", help="run folder")
    p.add_argument("--resume", metavar="OUT", help="continue the run in OUT")
    p.add_argument("--overwrite", action="store_true", help="replace the run in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--list-settings",
        action="store_true",
        help="print every setting with its value for this command line, then exit",
    )
    p.add_argument(
        "settings",
        nargs="*",
        metavar="key=value",
        help="any GPTConfig or TrainConfig field, e.g. n_layer=4 lr=1e-3",
    )
    p.set_defaults(run=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    import time

    # max_time counts the whole command: loading torch (a second or two) included
    started = time.perf_counter()
    from gptlab.train import train

    model_config, train_config = _train_settings(args)
    if args.list_settings:
        return _list_settings(args, model_config, train_config)
    result = train(
        model_config,
        train_config,
        resume=bool(args.resume),
        overwrite=args.overwrite,
        progress=not args.no_progress,
        started=started,
    )
    say = print if result.main else (lambda *a: None)  # under torchrun: rank 0 reports
    if result.interrupted:  # exit 130, as an interrupted sample: `train && eval` stops here
        say(
            f"stopped at step {result.step}; checkpoint saved. Resume with: "
            f"gptlab train --resume {result.out}"
        )
        return 130
    else:
        val = f", val loss {result.last_val_loss:.4f}" if result.last_val_loss else ""
        say(f"done: {result.step} steps{val}; model in {result.out}")
    return 0


def _list_settings(args: argparse.Namespace, model_config, train_config) -> int:
    """Print every setting with the value this command line gives it, and what it means."""
    from gptlab.config import PRESETS, describe_settings

    rows = describe_settings(model_config, train_config)
    width = max(len(name) for _, name, _, _ in rows)
    where = f"the run in {args.resume}" if args.resume else f"preset {args.preset}"
    print(f"settings for {where}, with this command's changes (set any with key=value):")
    section = None
    for part, name, value, meaning in rows:
        if part != section:
            print(f"[{part}]")
            section = part
        shown = value  # TOML's words for booleans and None (0 and 1 stay numbers)
        if value is None or isinstance(value, bool):
            shown = "unset" if value is None else str(value).lower()
        print(f"  {name:<{width}}  {shown!s:<22} {meaning}")
    print(f"presets: {', '.join(PRESETS)}")
    return 0


MAX_SAMPLES = 1000  # one command's limit: a typo such as 100000000 should not run for a day


def add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a run folder or a pretrained model")
    p.add_argument("model", help=HUB_HELP)
    p.add_argument("--prompt", default="", help="text to continue (default: start afresh)")
    p.add_argument("--prompt-file", help="read the prompt from a UTF-8 file")
    p.add_argument(
        "--num-samples", type=int, default=1, help=f"samples to draw, at most {MAX_SAMPLES}"
    )
    p.add_argument("--max-new-tokens", type=int, default=500, help="tokens to add per sample")
    p.add_argument(
        "--temperature", type=float, default=0.8, help="0 = greedy; higher = more varied"
    )
    p.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest tokens")
    p.add_argument(
        "--top-p", type=float, default=None, help="sample from the smallest set holding mass p"
    )
    p.add_argument("--seed", type=int, default=1337, help="random seed of the sampler")
    _add_model_options(p, "weights while sampling (auto: bfloat16 where native, else float32)")
    p.add_argument("--no-stream", action="store_true", help="print each sample when complete")
    p.set_defaults(run=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from gptlab.generate import check_sampling, start_ids, stream
    from gptlab.hardware import resolve_device

    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 0:
        raise GptlabError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if not 0 <= args.seed < 2**63:  # torch's generators take a signed 64-bit seed
        raise GptlabError(f"--seed must be in [0, 2**63), got {args.seed}")
    if not 1 <= args.num_samples <= MAX_SAMPLES:
        raise GptlabError(f"--num-samples must be in 1..{MAX_SAMPLES}, got {args.num_samples}")
    device = resolve_device(args.device)
    model, tok = _model_and_tokenizer(args, device)
    if args.prompt_file and args.prompt:
        raise GptlabError("give --prompt or --prompt-file, not both")
    if args.prompt_file:
        from gptlab.data.corpus import read_text

        prompt = read_text(Path(args.prompt_file))
    else:
        prompt = args.prompt
    ids = start_ids(tok, prompt)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    for i in range(args.num_samples):
        if i:
            print("\n" + "-" * 40, flush=True)
        decoder = tok.decoder()
        pieces = [prompt]
        if not args.no_stream:
            print(prompt, end="", flush=True)
        tokens = stream(
            model,
            idx,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            args.top_p,
            eos_id=tok.eot_id,
            generator=generator,
        )
        try:
            for nxt in tokens:
                token = int(nxt[0])
                if token == tok.eot_id:
                    break
                text = decoder.step([token])
                pieces.append(text)
                if not args.no_stream and text:
                    print(text, end="", flush=True)
        except KeyboardInterrupt:  # Ctrl-C on a long --no-stream sample: what was made shows
            if args.no_stream:
                print("".join(pieces) + decoder.flush(), flush=True)
            raise
        tail = decoder.flush()
        pieces.append(tail)
        print(tail if not args.no_stream else "".join(pieces), flush=True)
    return 0


# ----------------------------------------------------------------------------- evaluation


def _model_and_tokenizer(args: argparse.Namespace, device=None):
    """The model and tokenizer of args.model, loaded as --device, --dtype, --quantize say
    (`gptlab.model.load`: one rule set for sample, eval and serve)."""
    from gptlab.model.load import load_for_inference

    return load_for_inference(args.model, device or args.device, args.dtype, args.quantize)


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="perplexity or multiple-choice accuracy of a model")
    esub = p.add_subparsers(dest="what", metavar="WHAT", parser_class=_Parser)
    esub.required = True
    for name, helptext, run in (
        ("perplexity", "perplexity of a text file (docs/evaluation.md)", cmd_eval_perplexity),
        ("multiple-choice", "HellaSwag-format accuracy", cmd_eval_multiple_choice),
        ("last-word", "LAMBADA-style last-word accuracy (greedy)", cmd_eval_last_word),
    ):
        e = esub.add_parser(name, help=helptext)
        e.add_argument("model", help=HUB_HELP)
        e.add_argument("--json", action="store_true", help="print one JSON object")
        _add_model_options(e, "weights while scoring (auto: bfloat16 where native, else float32)")
        e.set_defaults(run=run)
        if name == "perplexity":
            from gptlab.config import PERPLEXITY_METHODS as METHODS

            e.add_argument("--input", required=True, help="UTF-8 text file")
            e.add_argument(
                "--method",
                choices=("auto", *METHODS),
                default="auto",
                help="lm-eval: the harness's rolling windows (comparable with its tables); "
                "hf-guide: transformers' docs recipe; gptlab: each token once, sliding; auto "
                "(default): lm-eval where the vocabulary has an end-of-text token, else gptlab",
            )
            e.add_argument(
                "--stride", type=int, default=None, help="hf-guide, gptlab (default: block_size)"
            )
            e.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
        else:
            what = "JSONL: ctx, endings, label" if name == "multiple-choice" else 'JSONL: "text"'
            e.add_argument("--data", required=True, help=what)
            e.add_argument("--limit", type=int, default=None, help="first N examples only")
            e.add_argument("--batch-size", type=int, default=8, help="examples per forward pass")
        if name == "multiple-choice":
            e.add_argument(
                "--hellaswag",
                action="store_true",
                help="rows of the raw HellaSwag dataset, cleaned as the harness does",
            )


def cmd_eval_perplexity(args: argparse.Namespace) -> int:
    from gptlab.data.corpus import read_text
    from gptlab.eval import perplexity
    from gptlab.eval.logprobs import check_batch_size

    check_batch_size(args.batch_size)
    path = Path(args.input)
    if path.is_dir():
        raise GptlabError(f"{path}: is a folder; --input takes one text file")
    if path.exists() and not path.is_file():  # /dev/zero, a named pipe: it would never end
        raise GptlabError(f"{path}: not a regular file (a device or a pipe); give a text file")
    if not path.is_file():
        raise GptlabError(f"{path}: no such file")
    if args.method == "lm-eval" and args.stride is not None:
        raise GptlabError(
            "--stride applies to --method hf-guide and gptlab (lm-eval's windows "
            "follow one another)"
        )
    model, tok = _model_and_tokenizer(args)
    method = args.method
    if method == "auto":  # the harness's numbers where they exist (they need end-of-text)
        method = "lm-eval" if tok.eot_id is not None and args.stride is None else "gptlab"
    text = read_text(path)
    result = perplexity(
        model,
        tok.encode(text),
        args.stride,
        args.batch_size,
        method,
        prefix_id=tok.eot_id,
        text=text,
    )
    result = {**result, "model": args.model, "input": str(path)}
    if args.json:
        print(json.dumps(result))
    else:
        how = "" if method == "lm-eval" else f", stride {result['stride']}"
        print(
            f"{method}: token perplexity {result['perplexity']:.4f} (mean nll "
            f"{result['nll']:.4f} nats) over {result['tokens']:,} tokens, word perplexity "
            f"{result['word_perplexity']:.4f}, bits per byte {result['bits_per_byte']:.4f}; "
            f"{result['windows']} windows of {result['block_size']}{how}"
        )
    return 0


def cmd_eval_multiple_choice(args: argparse.Namespace) -> int:
    from gptlab.eval import evaluate_multiple_choice, read_examples
    from gptlab.eval.logprobs import check_batch_size

    examples = read_examples(args.data, args.limit, hellaswag=args.hellaswag)
    check_batch_size(args.batch_size)
    model, tok = _model_and_tokenizer(args)
    result = evaluate_multiple_choice(
        model, tok, examples, progress=not args.json, batch_size=args.batch_size
    )
    if not args.json:
        result.pop("scores")
        print(
            f"{result['examples']} examples: acc {result['acc']:.4f}, acc_norm "
            f"{result['acc_norm']:.4f}, acc_bytes {result['acc_bytes']:.4f}, acc_norm_token "
            f"{result['acc_norm_token']:.4f}"
        )
    else:
        print(json.dumps({**result, "model": args.model, "data": args.data}))
    return 0


def cmd_eval_last_word(args: argparse.Namespace) -> int:
    from gptlab.eval.logprobs import check_batch_size
    from gptlab.eval.multiple_choice import evaluate_last_word, read_last_words

    passages = read_last_words(args.data, args.limit)
    check_batch_size(args.batch_size)
    model, tok = _model_and_tokenizer(args)
    result = evaluate_last_word(model, tok, passages, args.batch_size, source=args.data)
    if args.json:
        print(json.dumps({**result, "model": args.model, "data": args.data}))
    else:
        print(
            f"{result['examples']} passages: acc {result['acc']:.4f}, perplexity "
            f"{result['perplexity']:.4f}"
        )
    return 0


# ----------------------------------------------------------------------------- attention


FIGURES_MARK = ".gptlab-figures"


def add_attention(sub) -> None:
    p = sub.add_parser("attention", help="draw the attention toolkit's figures (PNG)")
    p.add_argument(
        "demo",
        choices=[
            "pooling",
            "scoring",
            "multihead",
            "positional",
            "bahdanau",
            "architecture",
            "gpt2",
            "all",
        ],
        help="which figure; all = every toolkit one",
    )
    p.add_argument("--out", default="figures", help="folder for the PNG files")
    p.add_argument("--quick", action="store_true", help="tiny training budgets (for tests)")
    p.add_argument("--model", help="gpt2 demo: run folder or pretrained name (default gpt2)")
    p.add_argument(
        "--prompt",
        default=None,
        help="gpt2 demo: the text to look at (default: 'To be, or not to be, that is the "
        "question')",
    )
    p.add_argument("--layer", type=int, default=0, help="gpt2 demo: which layer")
    p.add_argument(
        "--overwrite", action="store_true", help="draw into a folder that holds other files too"
    )
    p.set_defaults(run=cmd_attention)


def cmd_attention(args: argparse.Namespace) -> int:
    from gptlab.attention.demos import DEMOS

    names = [args.demo] if args.demo != "all" else [n for n in DEMOS if n != "gpt2"]
    if args.demo == "all" and args.model:
        names.append("gpt2")
    # figures are cheap to redraw: a folder of them that this command made (its mark says
    # so) is redrawn without asking; figures of the same names that a user made are not
    out = _output_folder(args.out, args.overwrite, [f"{n}.png" for n in DEMOS], FIGURES_MARK)
    for name in names:
        kwargs = {"quick": args.quick}
        if name == "gpt2":  # pictures are drawn in float32, on the CPU
            from gptlab.model.load import load_for_inference

            model, tok = load_for_inference(args.model or "gpt2", "cpu", "float32")
            kwargs.update(model=model, tokenizer=tok, prompt=args.prompt, layer=args.layer)
        path = DEMOS[name](out, **kwargs)
        print(path)
    (out / FIGURES_MARK).write_text("figures drawn by gptlab attention\n", encoding="utf-8")
    return 0


# ----------------------------------------------------------------------------- serve


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="a local web page: generate and look inside the model")
    p.add_argument("model", help=HUB_HELP)
    p.add_argument("--compare", metavar="MODEL2", help="a second model, side by side")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    _add_model_options(p, "weights' dtype")
    p.add_argument(
        "--max-generations", type=int, default=2, help="generations at once (more get 429)"
    )
    p.set_defaults(run=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import ipaddress

    try:
        import uvicorn

        from gptlab.serve.app import Server, load_lab
    except ImportError as e:
        raise GptlabError(
            f"gptlab serve needs the web extra (pip install 'gptlab[web]'): {e}"
        ) from None
    if not 1 <= args.port <= 65535:
        raise GptlabError(f"--port must be in 1..65535, got {args.port}")
    if args.max_generations < 1:
        raise GptlabError(f"--max-generations must be at least 1, got {args.max_generations}")
    models = [args.model, *([args.compare] if args.compare else [])]
    labs = [load_lab(m, args.device, args.dtype, args.quantize) for m in models]
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        _say(
            f"gptlab: note: serving on {args.host}, not loopback: anyone who can reach this "
            "machine can use the page and its API"
        )
    _check_can_listen(args.host, args.port)  # before saying where the page is
    names = " and ".join(lab.name for lab in labs)
    print(f"gptlab serve: {names} at http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    app = Server(labs, max_generations=args.max_generations).app()
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    except SystemExit as e:  # uvicorn exits when it cannot bind
        raise GptlabError(f"cannot serve on {args.host}:{args.port} (in use?)") from e
    return 0


def _check_can_listen(host: str, port: int) -> None:
    """The address resolves and the port is free, as one line each (uvicorn would print its
    own error after ours, and only once the page had been announced)."""
    import socket

    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise GptlabError(f"--host {host}: not an address to listen on ({e})") from None
    family, kind, proto, _, address = found[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as e:
            raise GptlabError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    import platform

    from gptlab import __version__

    parser = _Parser(prog="gptlab", description=__doc__)
    parser.add_argument(
        "--version",
        action="version",
        version=f"gptlab {__version__} (Python {platform.python_version()})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in (
        add_info,
        add_convert,
        add_prepare,
        add_train,
        add_sample,
        add_eval,
        add_attention,
        add_serve,
        add_tokenizer,
    ):  # the order --help lists them in
        add(sub)
    return parser


# arguments that are text, not paths: decoded from the bytes given, whatever the locale
TEXT_ARGUMENTS = ("prompt", "text", "special")


def _utf8_text(arg: str) -> str:
    """An argument as text. Under a C locale without UTF-8 mode (PYTHONUTF8=0), Python hands
    UTF-8 bytes over as escapes (lone surrogates): valid UTF-8 all the same, so decoded here;
    bytes that are not UTF-8 are one line."""
    try:
        arg.encode("utf-8")
        return arg
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(arg).decode("utf-8")
    except UnicodeError:
        raise GptlabError(f"argument {arg!r} is not valid UTF-8 text") from None


def _unrecognized(extra: Sequence[str], takes_settings: bool) -> str:
    """Name the options argparse did not know, not the valid key=value settings after them;
    where one is a setting written as an option (--tokenizer DIR), say how to write it."""
    options = [a for a in extra if a.startswith("-")] or list(extra)
    message = f"unrecognized arguments: {' '.join(options)}"
    if takes_settings:
        import dataclasses

        from gptlab.config import GPTConfig, TrainConfig

        known = {f.name for c in (GPTConfig, TrainConfig) for f in dataclasses.fields(c)}
        for option in options:
            key = option.lstrip("-").split("=", 1)[0].replace("-", "_")
            if key in known:
                return f"{message} (settings are key=value: {key}=...)"
    return message


def _say(line: str) -> None:
    """One line on stderr (every progress bar is closed by the code that opened it, on an error
    too, so the line starts a line of its own)."""
    print(line, file=sys.stderr, flush=True)


def _settle_interrupted_overwrite(args: argparse.Namespace) -> None:
    """A run folder read as a model (sample, eval, serve, convert, attention) where a
    `train --overwrite` was killed before the new run saved anything holds the old run aside:
    it is put back first, as --resume does (refused while a training holds the folder)."""
    for name in ("model", "compare"):
        value = getattr(args, name, None)
        if isinstance(value, str) and os.path.isdir(value):
            from gptlab.train.runfolder import settle_now

            settle_now(Path(value))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning is one line (`gptlab: note: ...`), not Python's two lines of source."""
    origin = "" if "gptlab" in str(filename) else f"{category.__name__}: "
    _say(f"gptlab: note: {origin}{message}")


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    # text that the terminal's encoding cannot show (PYTHONIOENCODING=ascii, say) is escaped,
    # as Python already does on stderr, instead of ending the command with a traceback
    stdout, escaped = sys.stdout, False
    if getattr(stdout, "errors", None) == "strict" and hasattr(stdout, "reconfigure"):
        if "utf" not in (stdout.encoding or "").lower():
            stdout.reconfigure(errors="backslashreplace")
            escaped = True
    with warnings.catch_warnings():  # restored on return: main() may run inside a program
        warnings.showwarning = _show_warning
        try:
            for arg in argv:  # bytes that are not UTF-8 reach Python as lone surrogates
                _utf8_text(arg)
            args, extra = parser.parse_known_args(argv)
            for name in TEXT_ARGUMENTS:  # (paths keep the form the file system reads)
                value = getattr(args, name, None)
                if isinstance(value, str):
                    setattr(args, name, _utf8_text(value))
                elif isinstance(value, list):
                    setattr(args, name, [_utf8_text(v) for v in value])
            # key=value settings may come between or after options (argparse wants them last)
            if extra and hasattr(args, "settings") and not any(a.startswith("-") for a in extra):
                args.settings = [*args.settings, *extra]
            elif extra:
                parser.error(_unrecognized(extra, hasattr(args, "settings")))
            _settle_interrupted_overwrite(args)
            return args.run(args)
        except GptlabError as e:
            _say(f"gptlab: error: {e}")
            return 2
        except BrokenPipeError as e:  # `gptlab info RUN | head -1`: the reader has gone
            if e.filename is not None or not _stdout_is_closed():  # another pipe: an error
                where = f"{e.filename}: " if e.filename else ""
                _say(f"gptlab: error: {where}{e.strerror or e}")
                return 2
            _quiet_stdout()
            return 141  # as a shell reports a process that SIGPIPE ended
        except OSError as e:  # any file the user named: missing, unreadable, a device, full disk
            where = f"{e.filename}: " if e.filename else ""
            _say(f"gptlab: error: {where}{e.strerror or e}")
            return 2
        except KeyboardInterrupt:
            _say("gptlab: interrupted")
            return 130
        finally:
            if escaped and sys.stdout is stdout:  # a program that calls main() gets it back
                stdout.reconfigure(errors="strict")


def _stdout_is_closed() -> bool:
    """True if stdout is a pipe whose reader has gone (poll says POLLERR)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no descriptor
        return False


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush into a closed pipe
    prints no 'Exception ignored' of its own."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):  # (no file descriptor: a program's own stdout object)
        pass
