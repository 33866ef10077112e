"""Hugging Face GPT-2 checkpoints <-> gptlab's `GPT`.

gptlab's GPT uses Hugging Face's module names and, like its `Conv1D`, stores the projection
matrices as (in, out), so weights map one to one. The differences: checkpoints may name weights
without the `transformer.` prefix (GPT2Model), may carry attention-mask buffers (`attn.bias`,
`attn.masked_bias`) that are not weights, and may come from a torch.compile'd or DDP-wrapped
model (`_orig_mod.`, `module.`). Everything gptlab saves is a Hugging Face folder; a small
"gptlab" entry in config.json keeps what that format cannot say (no biases, a padded
vocabulary), so a gptlab folder loads back exactly. An int8 folder (weights saved after
`--quantize int8`) is gptlab's own format, marked in config.json so that transformers refuses
it rather than misreading it (`load_int8`, `int8_tensors`).

Loading builds the class it is given (`load_pretrained(cls, ...)`, as transformers does), so
this module never imports the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from gptlab import hub
from gptlab.config import GPTConfig
from gptlab.errors import GptlabError, first_line
from gptlab.fileio import atomic_write, atomic_write_json, read_json_object
from gptlab.model.int8 import Int8Linear

# hf.py builds the class it is given (cls, gptlab.model.GPT) and never imports the network
GPT = torch.nn.Module

# Buffers some checkpoints carry; they hold the causal mask, not learned numbers.
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# Prefixes added by torch.compile (_orig_mod.) and DistributedDataParallel (module.).
WRAPPER_PREFIXES = ("_orig_mod.", "module.")
# Activations that are exactly GELU with the tanh approximation.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# ----------------------------------------------------------------------------- config


INT8_MODEL_TYPE = "gptlab-int8-gpt2"  # config.json of an int8 folder (`load_int8`)


def config_from_hf(hf: dict, source: str = "config.json") -> GPTConfig:
    """GPT2Config's fields -> GPTConfig, refusing settings this network cannot honour."""
    if hf.get("model_type", "gpt2") not in ("gpt2", INT8_MODEL_TYPE):
        raise GptlabError(f"{source}: model_type is {hf['model_type']!r}, not 'gpt2'")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in TANH_GELUS:
        raise GptlabError(
            f"{source}: activation_function {activation!r} is not supported "
            f"(gptlab's MLP uses GELU with the tanh approximation: {', '.join(TANH_GELUS)})"
        )
    refused = {
        "add_cross_attention": False,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
    }
    for key, supported in refused.items():
        if bool(hf.get(key, supported)) != supported:
            raise GptlabError(
                f"{source}: {key}={hf[key]!r} is not supported by gptlab's GPT-2 "
                f"(it needs {key}={str(supported).lower()})"
            )
    missing = [k for k in ("vocab_size", "n_embd", "n_layer", "n_head") if k not in hf]
    if "n_positions" not in hf and "n_ctx" not in hf:
        missing.append("n_positions")
    if missing:
        raise GptlabError(f"{source}: missing {', '.join(missing)}")
    n_inner = hf.get("n_inner")
    if n_inner is not None and n_inner != 4 * hf["n_embd"]:
        raise GptlabError(
            f"{source}: n_inner={n_inner} is not supported (gptlab's MLP is 4 * n_embd = "
            f"{4 * hf['n_embd']} wide)"
        )
    extra = hf.get("gptlab") or {}
    if not isinstance(extra, dict):
        raise GptlabError(f"{source}: 'gptlab' must be an object, got {extra!r}")
    try:
        return _gpt_config(hf, extra)
    except GptlabError as e:
        raise GptlabError(f"{source}: {e}") from None


def _gpt_config(hf: dict, extra: dict) -> GPTConfig:
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf.get("n_positions", hf.get("n_ctx")),
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        dropout=extra.get("dropout", 0.0),
        bias=extra.get("bias", True),
        padded_vocab_size=extra.get("padded_vocab_size"),
    )


def config_to_hf(config: GPTConfig, dtype: torch.dtype = torch.float32) -> dict:
    """GPTConfig -> the config.json transformers reads, plus gptlab's own entry."""
    hf = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.layer_norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "gptlab": {
            "bias": config.bias,
            "padded_vocab_size": config.padded_vocab_size,
            "dropout": config.dropout,
        },
    }
    eot = 50256
    if config.vocab_size > eot:  # GPT-2's <|endoftext|>, only where the vocabulary has it
        hf["bos_token_id"] = hf["eos_token_id"] = eot
    return hf


# ----------------------------------------------------------------------------- reading


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder (one file, or shards listed by an index file), each
    checked to hold finite numbers: a NaN in one LayerNorm weight (a run that diverged, a
    damaged file) would otherwise sample newlines, or a perplexity of nan, without a word."""
    tensors = _read_state_dict(folder)
    for key, tensor in tensors.items():
        if tensor.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            continue  # int8 weights; float8 has no isfinite
        # a NaN or inf makes the sum so (one pass, ~40x cheaper than a look at each value);
        # only a sum that is not finite (a bad value, or an overflow) asks each value
        if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
            raise GptlabError(
                f"{folder}: the weight {key} holds NaN or infinite values; these weights are "
                "damaged (a run that diverged?) and cannot be used"
            )
    return tensors


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return _read_weight_file(path)
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise GptlabError(f"{path}: not a valid shard index ({e})") from e
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            shard_path = folder / shard
            if not shard_path.is_file():
                raise GptlabError(f"{path} lists {shard}, which is missing")
            tensors.update(_read_weight_file(shard_path))
        return tensors
    raise GptlabError(f"{folder}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # truncated or corrupt header, bad offsets, ...
            raise GptlabError(f"{path}: cannot read safetensors file ({first_line(e)})") from e
    # A pickle: never executed, weights_only=True refuses anything but tensors and containers.
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (pre-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's own message may advise weights_only=False, i.e. running the file's code: a
        # corrupt or untrusted file is exactly where that must not be suggested
        reason = first_line(e)
        if "weights_only" in reason or "Weights only" in reason:
            reason = "not a plain PyTorch checkpoint of tensors: corrupt, or holds code"
        raise GptlabError(f"{path}: cannot read PyTorch weights ({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GptlabError(f"{path}: expected a dictionary of tensors")
    return state


def _canonical_name(key: str) -> str:
    """Strip wrapper prefixes and give every weight the GPT2LMHeadModel name."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key.removeprefix(prefix), True
    if not key.startswith(("transformer.", "lm_head.")):
        key = "transformer." + key  # GPT2Model checkpoints (e.g. the hub's gpt2) lack it
    return key


def state_dict_from_hf(
    cls: type[GPT], hf_state: dict[str, torch.Tensor], config: GPTConfig, source: str
) -> dict[str, torch.Tensor]:
    """Hugging Face tensors -> the exact state dict of `cls(config)` (lm_head tied, left out)."""
    wanted = _expected_shapes(cls, config)
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for raw_key, tensor in hf_state.items():
        key = _canonical_name(raw_key)
        if key.endswith(BUFFER_SUFFIXES) or key == "lm_head.weight":
            continue  # mask buffers; the head is the token embedding
        if key not in wanted:
            if (
                not config.bias
                and key.endswith(".bias")
                and key in _expected_shapes(cls, config.replace(bias=True))
            ):
                if torch.count_nonzero(tensor):
                    raise GptlabError(
                        f"{source}: {raw_key} is not zero, but the config says bias=false"
                    )
                continue  # zero biases written for transformers' sake
            unexpected.append(raw_key)
            continue
        if key == "transformer.wte.weight" and config.padded_vocab_size:
            if tensor.shape[0] == config.vocab_size:  # exported with the padding stripped
                padding = tensor.new_zeros(
                    config.padded_vocab_size - config.vocab_size, tensor.shape[1]
                )
                tensor = torch.cat([tensor, padding])
        if tuple(tensor.shape) != wanted[key]:
            raise GptlabError(
                f"{source}: {raw_key} has shape {tuple(tensor.shape)}, expected {wanted[key]} "
                "for this config"
            )
        out[key] = tensor
    if unexpected:
        raise GptlabError(f"{source}: unexpected weights {', '.join(sorted(unexpected)[:5])}")
    missing = [k for k in wanted if k not in out]
    if missing:
        raise GptlabError(f"{source}: missing weights {', '.join(missing[:5])}")
    return out


def _expected_shapes(cls: type[GPT], config: GPTConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = cls(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}


def read_config(folder: Path) -> GPTConfig:
    """The GPTConfig of a model folder's config.json (Hugging Face's or gptlab's)."""
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        raise GptlabError(f"{folder}: no config.json, so this is not a model folder")
    return config_from_hf(read_json_object(config_path), str(config_path))


def load_pretrained(
    cls: type[GPT],
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> GPT:
    """A local Hugging Face / gptlab folder, or a hub name fetched online -> cls in eval mode
    (an int8 folder in float32, whatever dtype says)."""
    folder = Path(name_or_path).expanduser()
    if not folder.exists():
        name = str(name_or_path)
        if not hub.looks_like_repo_id(name):
            raise GptlabError(f"{name}: no such folder")
        safetensors = ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
        folder = hub.snapshot(name, ["config.json", *safetensors])  # root files only
        if not any((folder / f).is_file() for f in WEIGHT_FILES):
            folder = hub.snapshot(name, ["config.json", "pytorch_model*.bin*"])
    if not folder.is_dir():
        raise GptlabError(f"{folder}: not a folder (expected config.json and model weights)")
    config = read_config(folder)
    if is_int8_folder(folder):
        model = load_int8(cls, read_state_dict(folder), config, str(folder))  # float32
        return model.to(device) if device is not None else model
    state = state_dict_from_hf(cls, read_state_dict(folder), config, str(folder))
    state = {k: v.to(dtype=dtype or torch.float32).contiguous() for k, v in state.items()}
    model = _assign(cls, config, state)
    if device is not None:
        model.to(device)
    return model.eval()


def _assign(cls: type[GPT], config: GPTConfig, state: dict[str, torch.Tensor]) -> GPT:
    """cls(config) built on the meta device (no memory, no initialisation) and given these
    tensors as its parameters; the head is tied to the token embedding again."""
    with torch.device("meta"):
        model = cls(config)
    if "lm_head.weight" not in state:
        state = {**state, "lm_head.weight": state["transformer.wte.weight"]}
    model.load_state_dict(state, strict=False, assign=True)
    if not isinstance(model.lm_head, Int8Linear):
        model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced the tie
    return model


# ----------------------------------------------------------------------------- int8

PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def is_int8_config(hf_config: dict) -> bool:
    """Whether a config.json describes an int8 folder written by `save_pretrained`."""
    extra = hf_config.get("gptlab")
    return isinstance(extra, dict) and extra.get("quantization") == "int8"


def is_int8_folder(folder: str | os.PathLike) -> bool:
    """Whether a local model folder holds int8 weights (its config.json says so); False where
    there is none or it cannot be read (the loader then says why)."""
    try:
        return is_int8_config(read_json_object(Path(folder) / "config.json"))
    except (OSError, GptlabError):
        return False


def int8_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """A model with int8 projections and head -> the tensors of its model.safetensors: int8
    weights and float32 scales for every projection and the head, float32 for the rest (the
    embedding tables, LayerNorms and biases)."""
    out = {}
    for key, tensor in model.state_dict().items():
        if key == "transformer.wte.weight":
            tensor = tensor[: model.config.vocab_size]
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.float()  # the float parts are float32 on disk, whatever in memory
        out[key] = tensor.contiguous().clone()
    return out


def load_int8(cls: type[GPT], tensors: dict[str, torch.Tensor], config: GPTConfig, source: str):
    """The tensors `int8_tensors` wrote -> cls(config) with Int8Linear projections and an int8
    head, as it was saved (nothing is quantised again). A missing, extra or misshapen tensor
    is a GptlabError naming it."""

    def take(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        t = tensors.pop(key, None)
        if t is None:
            raise GptlabError(f"{source}: not a complete int8 checkpoint ({key} is missing)")
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise GptlabError(
                f"{source}: {key} is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}"
            )
        return t.contiguous()

    tensors = dict(tensors)
    C, V = config.n_embd, config.vocab_size
    with torch.device("meta"):
        model = cls(config)
    shapes = {
        "attn.c_attn": (3 * C, C),
        "attn.c_proj": (C, C),
        "mlp.c_fc": (4 * C, C),
        "mlp.c_proj": (C, 4 * C),
    }
    for i, block in enumerate(model.transformer.h):
        for name in PROJECTIONS:
            prefix, (n_out, n_in) = f"transformer.h.{i}.{name}", shapes[name]
            q = take(f"{prefix}.weight_int8", (n_out, n_in), torch.int8)
            scale = take(f"{prefix}.scale", (n_out,), torch.float32)
            bias = take(f"{prefix}.bias", (n_out,), torch.float32) if config.bias else None
            parent, child = name.split(".")
            setattr(getattr(block, parent), child, Int8Linear(q, scale, bias))
    model.lm_head = Int8Linear(
        take("lm_head.weight_int8", (V, C), torch.int8),
        take("lm_head.scale", (V,), torch.float32),
        None,
    )
    rest = {}
    for key, param in model.state_dict().items():
        if key.endswith((".weight_int8", ".scale")) or (".c_" in key and key.endswith(".bias")):
            continue
        shape = tuple(param.shape)
        if key == "transformer.wte.weight":
            table = take(key, (V, C), torch.float32)
            rows = shape[0] - V  # a padded table: the extra rows are never predicted
            rest[key] = torch.cat([table, table.new_zeros(rows, C)]) if rows else table
        else:
            rest[key] = take(key, shape, torch.float32)
    if tensors:
        raise GptlabError(f"{source}: unexpected tensors {', '.join(sorted(tensors)[:3])}")
    model.load_state_dict(rest, strict=False, assign=True)
    return model.eval()


# ----------------------------------------------------------------------------- writing


def state_dict_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """gptlab weights -> GPT2LMHeadModel's: padded vocabulary rows stripped, zero biases where
    the model has none, the tied head left out."""
    config = model.config
    out = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to transformer.wte.weight; transformers ties it on load
        tensor = tensor.detach()
        if key == "transformer.wte.weight":
            tensor = tensor[: config.vocab_size]
        tensor = tensor.to("cpu").contiguous()
        if tensor.untyped_storage().nbytes() != tensor.nbytes:  # a view into a larger tensor
            tensor = tensor.clone()  # (safetensors writes whole tensors; no copy otherwise)
        out[key] = tensor
    if not config.bias:
        dtype = model.transformer.wte.weight.dtype
        for key, shape in _expected_shapes(type(model), config.replace(bias=True)).items():
            if key.endswith(".bias") and key not in out:
                out[key] = torch.zeros(shape, dtype=dtype)
    return out


def unwrap(model: torch.nn.Module) -> GPT:
    """The GPT inside torch.compile's and DistributedDataParallel's wrappers."""
    while (inner := model._modules.get("_orig_mod") or model._modules.get("module")) is not None:
        model = inner
    if not hasattr(model, "transformer") or not hasattr(model, "config"):
        raise TypeError(f"expected a gptlab GPT, got {type(model).__name__}")
    return model


def save_pretrained(model: GPT, directory: str | os.PathLike) -> None:
    """Write config.json and model.safetensors (each atomically) into `directory`."""
    from safetensors.torch import save_file

    model = unwrap(model)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise GptlabError(f"{directory}: exists and is not a folder")
    directory.mkdir(parents=True, exist_ok=True)
    quantized = isinstance(model.lm_head, Int8Linear)  # int8 weights: gptlab only
    tensors = int8_tensors(model) if quantized else state_dict_to_hf(model)
    dtype = model.transformer.wte.weight.dtype
    from safetensors import SafetensorError

    try:  # a full disk: one line (atomic_write has removed its temporary file)
        atomic_write(
            directory / "model.safetensors",
            lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}),
        )
    except (OSError, SafetensorError) as e:
        why = getattr(e, "strerror", None) or first_line(e)
        raise GptlabError(f"{directory}: could not write model.safetensors ({why})") from None
    hf_config = config_to_hf(model.config, dtype)
    if quantized:  # a model type transformers does not know: it refuses, not misloads
        hf_config["gptlab"]["quantization"] = "int8"
        hf_config["model_type"] = INT8_MODEL_TYPE
        hf_config["architectures"] = ["GptlabInt8GPT2"]
    atomic_write_json(directory / "config.json", hf_config)
