"""One loader for inference: a model name or folder, a device, a dtype and a quantization ->
the model and its tokenizer, checked to belong together. `gptlab sample`, `eval`, `serve`,
`convert` and `attention gpt2` load through it, so one rule set holds for all of them.

The model comes set up for sampling (`gptlab.model.fast.prepare_for_decoding`, once, here:
sampling itself never changes a model).

The rules: dtype="auto" is what the device computes well (`hardware.resolve_dtype`), except
that a CPU decodes bfloat16 faster than float32 only through gptlab's compiled kernel (PyTorch's
bfloat16 products for one row are slower than its float32 ones even where bfloat16 is native),
so where that kernel cannot be built (with its vector paths) auto means float32 on a CPU; an
int8 model (a folder saved with `--quantize int8`, or quantize="int8" now) computes in float32,
so an explicit other dtype is refused rather than ignored; the tokenizer must have exactly the
model's vocabulary.
"""

from __future__ import annotations

import os

import torch

from gptlab.errors import GptlabError
from gptlab.hardware import resolve_device, resolve_dtype
from gptlab.model import kernels
from gptlab.model.fast import prepare_for_decoding
from gptlab.model.gpt import GPT
from gptlab.model.hf import is_int8_folder
from gptlab.tokenizers import Tokenizer

QUANTIZE = ("none", "int8")


def inference_dtype(
    name_or_path: str | os.PathLike, device: torch.device, dtype: str, quantize: str
) -> torch.dtype:
    """The dtype the model computes in: float32 for int8 (an explicit other dtype refused),
    else `dtype` resolved for the device."""
    if quantize not in QUANTIZE:
        raise GptlabError(f"quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    if quantize == "int8" or is_int8_folder(name_or_path):
        if dtype not in ("auto", "float32"):
            what = "--quantize int8" if quantize == "int8" else f"{name_or_path} (int8 weights)"
            raise GptlabError(f"{what} computes in float32; drop --dtype (or give float32)")
        return torch.float32
    resolved = resolve_dtype(dtype, device)
    if dtype == "auto" and resolved == "bfloat16" and device.type == "cpu":
        if not kernels.vectorised():  # (see the module's docstring)
            resolved = "float32"
    return getattr(torch, resolved)


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "auto",
    dtype: str = "auto",
    quantize: str = "none",
    decoding: bool = True,
) -> GPT:
    """A model ready for inference (eval mode) on `device`, in `dtype`, int8 if asked, with
    the fast decoding path installed (`prepare_for_decoding`; decoding=False: the plain
    network, as `gptlab convert` saves it)."""
    device = device if isinstance(device, torch.device) else resolve_device(device)
    torch_dtype = inference_dtype(name_or_path, device, dtype, quantize)
    model = GPT.from_pretrained(name_or_path, device=device, dtype=torch_dtype)
    if decoding or quantize == "int8":
        prepare_for_decoding(model, quantize="int8" if quantize == "int8" else None)
    return model.eval()


def load_for_inference(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "auto",
    dtype: str = "auto",
    quantize: str = "none",
) -> tuple[GPT, Tokenizer]:
    """(model, tokenizer) of a folder or hub name, as `load_model` loads the model; the
    tokenizer must read exactly the model's ids."""
    model = load_model(name_or_path, device, dtype, quantize)
    tok = Tokenizer.from_pretrained(name_or_path)
    tok.check_model(model.config.vocab_size, str(name_or_path))
    return model, tok
