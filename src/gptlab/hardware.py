"""What this machine does well: the device and the dtype that `auto` stands for.

bfloat16 halves memory traffic and, where the hardware has bfloat16 arithmetic, runs matrix
products faster; where it has none, PyTorch emulates it and a step is many times slower
(15-40x seen on an AVX2-only CPU). So `auto` means bfloat16 only where it is native: CUDA
devices that support it, and CPUs with AVX512-BF16 or AMX. Everywhere else: float32.

GPTLAB_NATIVE_BF16=1 (or 0) makes this machine's CPU count as one with (or without) native
bfloat16, whatever its flags: the test suite uses it to behave on an AVX2-only CPU as it would
on one with AVX512-BF16, where `auto` means bfloat16.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Iterable

import torch

from gptlab.config import DTYPES
from gptlab.errors import GptlabError

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # names as /proc/cpuinfo spells them


CPUINFO = "/proc/cpuinfo"
NATIVE_BF16_ENV = "GPTLAB_NATIVE_BF16"


def _cpuinfo_field(names: tuple[str, ...]) -> str | None:
    """The first value of one of these fields in /proc/cpuinfo, or None (no such file)."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in names:
                    return value.strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where it cannot be read."""
    value = _cpuinfo_field(("flags", "Features"))
    return None if value is None else frozenset(value.split())


def _torch_cpu_has_bf16() -> bool:
    """PyTorch's own probe (private functions, so each is looked up with care)."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:  # a private API may change shape; then it simply says nothing
            continue
    return False


def cpu_has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """True if the CPU computes in bfloat16 natively (AVX512-BF16 or AMX).

    flags: the CPU's feature flags; by default this machine's: GPTLAB_NATIVE_BF16 if set,
    else /proc/cpuinfo, else PyTorch's probe where there is no such file (macOS, Windows)."""
    if flags is None:
        forced = native_bf16_override()
        if forced is not None:
            return forced
        flags = cpu_flags()
    if flags is None:
        return _torch_cpu_has_bf16()
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def native_bf16_override() -> bool | None:
    """GPTLAB_NATIVE_BF16's answer (1: native, 0: not), or None where it is unset."""
    value = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if value == "":
        return None
    if value not in ("0", "1"):
        raise GptlabError(f"{NATIVE_BF16_ENV} must be 0 or 1, got {value!r}")
    return value == "1"


def cuda_has_native_bf16(device: torch.device) -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no including_emulation: compute capability >= 8.0
        return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA, then Apple's MPS, then the CPU. Otherwise the named device, if present."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):  # meta, xpu, ...: not ours
        raise GptlabError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptlabError("device=cuda, but no CUDA GPU is available")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise GptlabError("device=mps, but Apple's MPS backend is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> str:
    """ "auto" -> "bfloat16" where the device computes it natively, else "float32". An explicit
    name is checked: float16 needs CUDA (and a grad scaler, which the trainer adds)."""
    if name == "auto":
        if device.type == "cuda":
            native = cuda_has_native_bf16(device)
        elif device.type == "cpu":
            native = cpu_has_native_bf16()
        else:  # mps and others: float32 is the safe, well-supported choice
            native = False
        return "bfloat16" if native else "float32"
    if name not in DTYPES:
        raise GptlabError(f"dtype must be auto, {', '.join(DTYPES)}; got {name!r}")
    if name == "float16" and device.type != "cuda":
        raise GptlabError("dtype=float16 needs a CUDA GPU; use auto, bfloat16 or float32")
    return name


def cpu_name() -> str:
    """The CPU's model name (for reports), e.g. 'AMD EPYC' or 'Intel(R) Xeon(R) ...'."""
    return _cpuinfo_field(("model name",)) or platform.processor() or platform.machine() or "CPU"


def describe() -> str:
    """One line naming the machine a figure came from: CPU, cores, bfloat16 support, torch,
    threads (and the GPU, if any)."""
    flags = cpu_flags()
    if flags is None:
        bf16 = f"native bf16 {'yes' if _torch_cpu_has_bf16() else 'no'} (torch probe)"
    else:
        present = [f for f in ("avx2", "avx512f", *BF16_CPU_FLAGS) if f in flags]
        bf16 = "flags " + (" ".join(present) or "none of avx2/avx512/bf16")
    forced = native_bf16_override()
    if forced is not None:
        bf16 += f" ({NATIVE_BF16_ENV}={int(forced)} overrides them)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    line = (
        f"{cpu_name()}, {cores} cores, {bf16}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    if torch.cuda.is_available():
        line += f"; GPU {torch.cuda.get_device_name()}"
    return line
