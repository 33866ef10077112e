"""gptlab's compiled CPU kernels for decoding (kernels.c beside this file): a float32 product
for few rows (`f32_matmul`) and the int8 weight-only one (used by gptlab.model.int8).

A decoding step multiplies one row per sequence by every weight matrix, so it runs at the
speed memory delivers the weights; PyTorch's CPU kernels for such shapes leave much of that
speed unused (benchmarks/matvec.py measures both). The C file is compiled at first use with the
system's C compiler (`-O3 -march=native -fopenmp`, then without each flag if the compiler
refuses it), once per CPU kind, into ~/.cache/gptlab/kernels, and loaded with ctypes. Where
nothing can be built, `library()` is None and callers use PyTorch's own products: the same
numbers, slower.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernels.c")


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "gptlab" / "kernels"


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels (built the first time on this CPU), or None where they cannot be
    built (no compiler, no source, an unwritable cache)."""
    from gptlab.hardware import cpu_flags

    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    try:
        source = SOURCE.read_bytes()
    except OSError:
        return None
    # -march=native: one build per CPU kind (and per torch, whose OpenMP runtime it shares)
    machine = " ".join([*sorted(cpu_flags() or ()), platform.machine(), platform.processor(),
                        torch.__version__, compiler])  # fmt: skip
    key = hashlib.sha256(source + machine.encode()).hexdigest()[:16]
    path = cache_dir() / f"kernels_{key}.so"
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                built = Path(tmp) / path.name
                for extra in (["-march=native", "-fopenmp"], ["-fopenmp"], []):
                    cmd = [compiler, "-O3", *extra, "-shared", "-fPIC", str(SOURCE),
                           "-o", str(built)]  # fmt: skip
                    try:
                        if subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0:
                            break
                    except subprocess.TimeoutExpired:
                        continue
                else:
                    return None
                os.replace(built, path)  # whole, or not at all (another process may race)
        except OSError:
            return None
    try:
        lib = ctypes.CDLL(str(path))
        lib.gptlab_int8_matmul.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_long] * 3
        lib.gptlab_f32_matmul.argtypes = (
            [ctypes.c_void_p] * 5 + [ctypes.c_long] * 3 + [ctypes.c_int]
        )
    except (OSError, AttributeError):
        return None
    lib.gptlab_int8_matmul.restype = lib.gptlab_f32_matmul.restype = None
    return lib


def f32_matmul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor | None:
    """x (..., in) @ weight (in, out) + bias (out,) -> (..., out) with the compiled kernel,
    using torch's thread count; None where the kernel cannot take it (not built, not a CPU,
    not float32, weight or bias not contiguous), for the caller to multiply another way. Sums
    in another order than PyTorch's: equal to rounding (tests/model/test_fast.py bounds it)."""
    # written for speed (a decoding step makes 49 of these calls): plain attribute tests
    f32 = torch.float32
    if (x.dtype is not f32 or weight.dtype is not f32 or not (x.is_cpu and weight.is_cpu)
            or not weight.is_contiguous()):  # fmt: skip
        return None
    if bias is not None and (bias.dtype is not f32 or not bias.is_cpu or not bias.is_contiguous()):
        return None
    lib = library()
    if lib is None:
        return None
    x = x.contiguous()
    K, N = weight.shape
    M = x.numel() // K
    threads = torch.get_num_threads()
    y = torch.empty(x.shape[:-1] + (N,))
    work = torch.empty((threads - 1) * M * N)  # the other threads' partial sums
    lib.gptlab_f32_matmul(x.data_ptr(), weight.data_ptr(),
                          None if bias is None else bias.data_ptr(), y.data_ptr(),
                          work.data_ptr(), M, K, N, threads)  # fmt: skip
    return y
