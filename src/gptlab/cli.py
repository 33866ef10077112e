"""The `gptlab` command: one sub-command per job. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from gptlab.errors import GptlabError

DTYPES = ("float32", "bfloat16", "float16")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (not usage + error) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise GptlabError(f"{message} (see {self.prog} --help)")


def _dtype(name: str):
    import torch

    return getattr(torch, name)


# ----------------------------------------------------------------------------- info


def _model_config(name_or_path: str):
    """A preset name or a model folder -> (GPTConfig, where it came from)."""
    from gptlab.config import PRESETS, GPTConfig

    if name_or_path in PRESETS:
        return GPTConfig.preset(name_or_path), f"preset {name_or_path}"
    folder = Path(name_or_path)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise GptlabError(
            f"{name_or_path}: neither a preset ({', '.join(PRESETS)}) nor a folder with config.json"
        )
    from gptlab.model.hf import config_from_hf

    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise GptlabError(f"{config_path}: not valid JSON ({e})") from e
    return config_from_hf(hf, str(config_path)), str(folder)


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


def cmd_convert(args: argparse.Namespace) -> int:
    from gptlab.model import GPT

    out = Path(args.out)
    if (out / "model.safetensors").exists() and not args.overwrite:
        raise GptlabError(f"{out} already holds model.safetensors; pass --overwrite to replace it")
    model = GPT.from_pretrained(args.model, dtype=_dtype(args.dtype))
    model.save_pretrained(out)
    print(f"saved {model.num_params():,} parameters ({args.dtype}) to {out}")
    return 0


# ----------------------------------------------------------------------------- tokenizer


def read_texts(paths: Sequence[str]) -> list[tuple[Path, str]]:
    """Text files, and the .txt/.md files under folders (sorted), as (path, text)."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file()
            )
            if not found:
                raise GptlabError(f"{path}: folder holds no .txt or .md files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise GptlabError(f"{path}: no such file or folder")
    texts = []
    for path in files:
        try:
            texts.append((path, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError as e:
            raise GptlabError(f"{path}: not UTF-8 text (byte {e.start})") from e
    return texts


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    import time

    from gptlab.tokenizers import train_bpe

    out = Path(args.out)
    if (out / "vocab.json").exists() and not args.overwrite:
        raise GptlabError(f"{out} already holds vocab.json; pass --overwrite to replace it")
    texts = read_texts(args.input)
    start = time.perf_counter()
    specials = args.special if args.special is not None else ["<|endoftext|>"]
    tok = train_bpe((t for _, t in texts), args.vocab_size, specials, args.pattern)
    seconds = time.perf_counter() - start
    tok.save(out)
    size = sum(len(t.encode("utf-8")) for _, t in texts)
    print(
        f"trained {tok.vocab_size} ids ({len(tok.merges)} merges) on {size:,} bytes from "
        f"{len(texts)} file(s) in {seconds:.1f}s -> {out}"
    )
    if tok.vocab_size < args.vocab_size:
        print(f"note: the corpus ran out of pairs before {args.vocab_size} ids")
    return 0


def cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    from gptlab.tokenizers import Tokenizer

    tok = Tokenizer.from_pretrained(args.tokenizer)
    ids = tok.encode(args.text)
    print(json.dumps(ids))
    if args.pieces:
        print(json.dumps([tok.decode([i]) for i in ids], ensure_ascii=False))
    return 0


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gptlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("info", help="shape and parameter count of a preset or a model folder")
    p.add_argument("model", help="preset name (gpt2, gpt2-medium, ...) or model folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser(
        "convert",
        help="a Hugging Face folder, hub name or gptlab folder -> a folder both can load",
    )
    p.add_argument("model", help="model folder or hub name (gpt2, gpt2-medium, ...)")
    p.add_argument("out", help="output folder (config.json + model.safetensors)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights' dtype on disk")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model in OUT")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("tokenizer", help="train a BPE vocabulary, or encode text with one")
    tsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    tsub.required = True
    t = tsub.add_parser("train", help="learn a byte-level BPE vocabulary from text files")
    t.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files or folders")
    t.add_argument("--vocab-size", type=int, required=True, help="ids in all (>= 256 + specials)")
    t.add_argument("--out", required=True, help="folder for vocab.json + merges.txt")
    t.add_argument(
        "--special", nargs="*", metavar="TOKEN", help="special tokens (default: <|endoftext|>)"
    )
    t.add_argument("--pattern", choices=("gpt2", "gpt4"), default="gpt2", help="pre-tokenizer")
    t.add_argument("--overwrite", action="store_true", help="replace a vocabulary in OUT")
    t.set_defaults(run=cmd_tokenizer_train)
    t = tsub.add_parser("encode", help="print the ids (and pieces) of a text")
    t.add_argument("tokenizer", help="tokenizer folder, model folder or gpt2 hub name")
    t.add_argument("text")
    t.add_argument("--pieces", action="store_true", help="also print each id's text")
    t.set_defaults(run=cmd_tokenizer_encode)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.run(args)
    except GptlabError as e:
        print(f"gptlab: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"gptlab: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptlab: interrupted", file=sys.stderr)
        return 130
