"""gptlab's compiled CPU kernels (kernels.c beside this file): for decoding, a product for few
rows (`matmul`, float32 or bfloat16), attention for one new position over the KV cache
(`decode_attention`, float32 or bfloat16) and the int8 weight-only product (used by
gptlab.model.int8); for every float32 forward and backward on a CPU, GPT-2's tanh GELU
(`gelu_tanh`, 4-5x PyTorch's, whose CPU tanh is slow).

A decoding step multiplies one row per sequence by every weight matrix, so it runs at the
speed memory delivers the weights; PyTorch's CPU kernels for such shapes leave much of that
speed unused (benchmarks/matvec.py measures both), and in bfloat16 on a CPU without native
bfloat16 they emulate it, ~15x slower than float32 (benchmarks/generate.py --bfloat16). The
bfloat16 kernels widen each weight to float32 in registers and sum in float32, so they read
half of float32's bytes on any CPU and need no bfloat16 arithmetic. The C file is compiled at
first use with the system's C compiler (`-O3 -march=native -fopenmp`, then without each flag
if the compiler refuses it), once per CPU kind, into ~/.cache/gptlab/kernels, and loaded with
ctypes. Where
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
import stat
import subprocess
import sys
import tempfile
import threading
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
    machine = " ".join(
        [
            *sorted(cpu_flags() or ()),
            platform.machine(),
            platform.processor(),
            torch.__version__,
            compiler,
        ]
    )
    key = hashlib.sha256(source + machine.encode()).hexdigest()[:16]
    name = f"kernels_{key}.so"
    # the user's cache, else a temporary folder of this user's (an unwritable HOME is no
    # reason to decode slowly, nor to blame the compiler)
    user = getattr(os, "getuid", lambda: "user")()
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"gptlab-{user}-kernels"):
        path = folder / name
        try:
            if folder != cache_dir():  # a shared /tmp: only a folder that is ours alone
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                st = folder.lstat()
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != user or st.st_mode & 0o077:
                    continue  # someone else's (a library planted there must not be loaded)
            if path.is_file():
                break
            path.parent.mkdir(parents=True, exist_ok=True)
            if not _build(compiler, path):
                return None  # the compiler failed: another folder will not help
            break
        except OSError:
            continue
    else:
        return None
    try:
        lib = ctypes.CDLL(str(path))
        lib.gptlab_int8_matmul.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_long] * 3
        lib.gptlab_f32_matmul.argtypes = (
            [ctypes.c_void_p] * 6 + [ctypes.c_long] * 3 + [ctypes.c_int]
        )
        lib.gptlab_bf16_matmul.argtypes = lib.gptlab_f32_matmul.argtypes
        lib.gptlab_decode_attention.argtypes = (
            [ctypes.c_void_p] * 5 + [ctypes.c_long] * 5 + [ctypes.c_int]
        )
        lib.gptlab_decode_attention_bf16.argtypes = lib.gptlab_decode_attention.argtypes
        lib.gptlab_gelu_tanh.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_long, ctypes.c_int]
        lib.gptlab_gelu_tanh_backward.argtypes = [ctypes.c_void_p] * 3 + [
            ctypes.c_long,
            ctypes.c_int,
        ]
        lib.gptlab_simd.argtypes = []
        lib.gptlab_simd.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    for function in (
        lib.gptlab_int8_matmul,
        lib.gptlab_f32_matmul,
        lib.gptlab_bf16_matmul,
        lib.gptlab_decode_attention,
        lib.gptlab_decode_attention_bf16,
        lib.gptlab_gelu_tanh,
        lib.gptlab_gelu_tanh_backward,
    ):
        function.restype = None
    return lib


def describe() -> str:
    """What the compiled kernels run on this machine, in words (for /api/info and reports)."""
    lib = library()
    if lib is None:
        return "none (no C compiler, or the build failed): PyTorch's own products"
    return "gptlab's C kernels, " + (
        "AVX2 and FMA" if lib.gptlab_simd() else "plain loops (no AVX2 and FMA)"
    )


def _build(compiler: str, path: Path) -> bool:
    """Compile kernels.c into path (whole, or not at all: another process may race), trying
    -march=native and OpenMP first; False if no variant compiles. An unwritable folder raises
    OSError."""
    if sys.stderr is not None and sys.stderr.isatty():  # a wait of seconds, said where seen
        print(
            "gptlab: note: compiling gptlab's kernels for this CPU (once)",
            file=sys.stderr,
            flush=True,
        )
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        built = Path(tmp) / path.name
        for extra in (["-march=native", "-fopenmp"], ["-fopenmp"], []):
            cmd = [
                compiler,
                "-O3",
                *extra,
                "-shared",
                "-fPIC",
                str(SOURCE),
                "-o",
                str(built),
                "-lm",
            ]
            try:
                if subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0:
                    os.replace(built, path)
                    return True
            except subprocess.TimeoutExpired:
                continue
    return False


KERNEL_DTYPES = (torch.float32, torch.bfloat16)
MAX_HEAD = 1024  # kernels.c's MAX_HEAD: the largest head size decode_attention takes


_work = threading.local()  # each thread's scratch buffer for matmul
KEPT_SCRATCH = 8 * 2**20  # floats (32 MB): larger scratch (long inputs) is not kept


def _scratch(floats: int) -> torch.Tensor:
    """Float32 scratch of at least `floats`: this thread's kept buffer (one allocation, not one
    per call: a decoding step makes ~50 products), or for a large product a fresh one."""
    if floats > KEPT_SCRATCH:
        return torch.empty(floats, dtype=torch.float32, device="cpu")
    buffer = getattr(_work, "buffer", None)
    if buffer is None or buffer.numel() < floats:
        buffer = _work.buffer = torch.empty(max(floats, 1), dtype=torch.float32, device="cpu")
    return buffer


def matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """x (..., in) @ weight (in, out) + bias (out,) [+ add (..., out), a residual added in the
    same pass] -> (..., out) with the compiled kernel, using torch's thread count, all float32
    or all bfloat16 (summed in float32; in bfloat16 rounded where PyTorch's operations round);
    None where the kernel cannot take it (not built, not a CPU, other dtypes, weight, bias or
    add not contiguous or of another shape), for the caller to multiply another way. Sums in
    another order than PyTorch's: equal to rounding (tests/model/test_fast.py bounds it)."""
    # written for speed (a decoding step makes 49 of these calls): plain attribute tests
    dtype = weight.dtype
    if (
        x.dtype is not dtype
        or dtype not in KERNEL_DTYPES
        or not (x.is_cpu and weight.is_cpu)
        or not weight.is_contiguous()
    ):
        return None
    if bias is not None and (
        bias.dtype is not dtype or not bias.is_cpu or not bias.is_contiguous()
    ):
        return None
    lib = library()
    if lib is None:
        return None
    K, N = weight.shape
    if x.size(-1) != K or (bias is not None and bias.shape != (N,)):
        return None  # (the caller's own product then says what is wrong)
    shape = x.shape[:-1] + (N,)
    if add is not None and (
        add.dtype is not dtype or add.shape != shape or not add.is_cpu or not add.is_contiguous()
    ):
        return None
    x = x.contiguous()
    M = x.numel() // K
    threads = torch.get_num_threads()
    # the buffers C writes: on the CPU whatever torch's defaults are
    y = torch.empty(shape, dtype=dtype, device="cpu")
    if M == 0:
        return y
    if dtype is torch.float32:  # the other threads' sums (thread 0 sums into y)
        run, floats = lib.gptlab_f32_matmul, (threads - 1) * M * N
    else:  # every thread's sums, and x widened to float32
        run, floats = lib.gptlab_bf16_matmul, threads * M * N + M * K
    run(
        x.data_ptr(),
        weight.data_ptr(),
        None if bias is None else bias.data_ptr(),
        None if add is None else add.data_ptr(),
        y.data_ptr(),
        _scratch(floats).data_ptr(),
        M,
        K,
        N,
        threads,
    )
    return y


def decode_attention(
    qkv: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """One new position's causal self-attention over a KV cache, in one call.

    qkv (B, 1, 3C): the position's query, key and value (c_attn's output); k_cache, v_cache
    (B, nh, L, hs) with positions [0, pos) filled: this position's key and value are stored
    at pos. mask (B, pos + 1) bool, True = may attend, or None (a row with nothing to
    attend to gets zeros, where scaled_dot_product_attention would give NaN). All float32 or
    all bfloat16 (computed in float32, y rounded once). Returns y (B, 1, C), the heads'
    outputs side by side (what goes into c_proj), or None where the kernel cannot take it (not
    built, other dtypes, not on a CPU, not contiguous, shapes that do not fit, no room at
    pos)."""
    dtype = qkv.dtype
    if dtype not in KERNEL_DTYPES or k_cache.dtype is not dtype or v_cache.dtype is not dtype:
        return None
    if not (qkv.is_cpu and k_cache.is_cpu and v_cache.is_cpu):
        return None
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or not 0 <= pos < k_cache.size(2):
        return None
    lib = library()
    if lib is None:
        return None
    B, H, L, D = k_cache.shape
    if qkv.shape != (B, 1, 3 * H * D) or v_cache.shape != k_cache.shape or D > MAX_HEAD:
        return None  # the kernel reads through raw pointers: the shapes must be exactly these
    if mask is not None and (mask.dtype is not torch.bool or mask.shape != (B, pos + 1)):
        return None  # (an additive float mask is not what the kernel reads)
    qkv = qkv.contiguous()
    if mask is not None:
        mask = mask.to(torch.uint8).contiguous()
    y = torch.empty(B, 1, H * D, dtype=dtype, device="cpu")
    if B == 0:
        return y
    run = (
        lib.gptlab_decode_attention if dtype is torch.float32 else lib.gptlab_decode_attention_bf16
    )
    run(
        qkv.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        None if mask is None else mask.data_ptr(),
        y.data_ptr(),
        B,
        H,
        D,
        L,
        pos,
        torch.get_num_threads(),
    )
    return y


def vectorised() -> bool:
    """True where the kernels were built with their AVX2 and FMA paths (measured faster than
    PyTorch's products and GELU); plain-C builds are correct but not measured faster."""
    return _vector_library() is not None


@functools.cache
def _vector_library() -> ctypes.CDLL | None:
    """The kernels where they were built with AVX2 and FMA (the GELU's plain C loops are
    slower than PyTorch's vectorised tanh), else None."""
    lib = library()
    return lib if lib is not None and lib.gptlab_simd() else None


class _TanhGELU(torch.autograd.Function):
    """GPT-2's GELU through the kernel, forward and backward (the input is kept for the
    backward, as PyTorch's own GELU keeps it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        y = torch.empty_like(x)
        _vector_library().gptlab_gelu_tanh(
            x.data_ptr(), y.data_ptr(), x.numel(), torch.get_num_threads()
        )
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        # a double backward (create_graph=True) needs a backward autograd can differentiate:
        # PyTorch's own, then (and anything unexpected)
        if torch.is_grad_enabled() or grad.dtype is not torch.float32 or not grad.is_cpu:
            return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")
        grad = grad.contiguous()
        dx = torch.empty_like(x)
        _vector_library().gptlab_gelu_tanh_backward(
            grad.data_ptr(), x.data_ptr(), dx.data_ptr(), x.numel(), torch.get_num_threads()
        )
        return dx


def gelu_tanh(x: torch.Tensor) -> torch.Tensor | None:
    """GELU with the tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), any
    shape, with autograd, computed as x * sigmoid(2u) in the kernel (equal to PyTorch's to
    float32 rounding: tests/model/test_fast.py); None where the kernel cannot take it, for the
    caller to run PyTorch's: not float32 on a CPU, not contiguous, no vector kernel built,
    while torch.compile or torch.jit traces (neither can see into a C call), under forward-mode
    AD or torch.func's transforms (a C call has no tangent rule)."""
    if x.dtype is not torch.float32 or not x.is_cpu or not x.is_contiguous():
        return None
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # (checked first: see above)
        return None
    if torch._C._functorch.is_functorch_wrapped_tensor(x) or _forward_ad_active():
        return None
    lib = _vector_library()
    if lib is None:
        return None
    if x.requires_grad and torch.is_grad_enabled():
        return _TanhGELU.apply(x)
    y = torch.empty_like(x)  # (no graph to record: the Function's overhead spared)
    lib.gptlab_gelu_tanh(x.data_ptr(), y.data_ptr(), x.numel(), torch.get_num_threads())
    return y


def _forward_ad_active() -> bool:
    """True inside torch.autograd.forward_ad.dual_level (whose tangents a C call would drop)."""
    from torch.autograd import forward_ad

    return forward_ad._current_level >= 0
