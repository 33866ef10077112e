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
