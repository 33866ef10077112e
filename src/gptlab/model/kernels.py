"""gptlab's compiled CPU kernels (kernels.c beside this file): for decoding, a product for few
rows (`matmul`, float32 or bfloat16), attention for one new position over the KV cache
(`decode_attention`, float32 or bfloat16), the int8 weight-only product (used by
gptlab.model.int8) and a whole block's step for one new position in one call (`block_step`:
LayerNorms, products, attention and GELU in one thread team); for every float32 forward and
backward on a CPU, GPT-2's tanh GELU (`gelu_tanh`, 4-5x PyTorch's, whose CPU tanh is slow) and,
for sequences up to 512 positions, causal self-attention (`causal_attention`, 1.1-1.7x
PyTorch's flash kernel at the small sizes CPU training uses).

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
import math
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
        return _declared(ctypes.CDLL(str(path)))
    except (OSError, AttributeError):
        return None


def _declared(lib: ctypes.CDLL) -> ctypes.CDLL:
    """lib with each C function's argument and result types set (AttributeError where one is
    missing)."""
    pointers, long_, int_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    lib.gptlab_int8_matmul.argtypes = [pointers] * 5 + [long_] * 3
    lib.gptlab_f32_matmul.argtypes = [pointers] * 6 + [long_] * 3 + [int_]
    lib.gptlab_bf16_matmul.argtypes = lib.gptlab_f32_matmul.argtypes
    lib.gptlab_decode_attention.argtypes = [pointers] * 5 + [long_] * 5 + [int_]
    lib.gptlab_decode_attention_bf16.argtypes = lib.gptlab_decode_attention.argtypes
    lib.gptlab_gelu_tanh.argtypes = [pointers] * 2 + [long_, int_]
    lib.gptlab_gelu_tanh_backward.argtypes = [pointers] * 3 + [long_, int_]
    lib.gptlab_block_step.argtypes = (
        [pointers] * 8 + [long_] * 6 + [ctypes.c_float] * 2 + [int_] * 2
    )
    lib.gptlab_block_step_floats.argtypes = [long_] * 3 + [int_] * 2
    lib.gptlab_block_step_floats.restype = long_
    lib.gptlab_attention_floats.argtypes = [long_] * 2
    lib.gptlab_attention_floats.restype = long_
    lib.gptlab_attention_forward.argtypes = [pointers] * 4 + [long_] * 4 + [int_]
    lib.gptlab_attention_backward.argtypes = [pointers] * 6 + [long_] * 4 + [int_]
    lib.gptlab_simd.argtypes = []
    lib.gptlab_simd.restype = int_
    for function in (
        lib.gptlab_int8_matmul,
        lib.gptlab_f32_matmul,
        lib.gptlab_bf16_matmul,
        lib.gptlab_decode_attention,
        lib.gptlab_decode_attention_bf16,
        lib.gptlab_gelu_tanh,
        lib.gptlab_gelu_tanh_backward,
        lib.gptlab_block_step,
        lib.gptlab_attention_forward,
        lib.gptlab_attention_backward,
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
    if k_cache.dim() != 4 or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        return None
    if not 0 <= pos < k_cache.size(2):
        return None
    lib = library()
    if lib is None:
        return None
    B, H, L, D = k_cache.shape
    if qkv.shape != (B, 1, 3 * H * D) or v_cache.shape != k_cache.shape or D > MAX_HEAD:
        return None  # the kernel reads through raw pointers: the shapes must be exactly these
    if mask is not None and (
        mask.dtype is not torch.bool or mask.shape != (B, pos + 1) or not mask.is_cpu
    ):
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


# ln_1 w, b; c_attn w, b; attn.c_proj w, b; ln_2 w, b; c_fc w, b; mlp.c_proj w, b
BLOCK_PARAMETERS = 12
_PRODUCTS = (2, 4, 8, 10)  # where the four products' weights are in that list


def block_step(
    x: torch.Tensor,
    params: list[torch.Tensor | None],
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: int,
    mask: torch.Tensor | None,
    eps: tuple[float, float],
    scales: list[torch.Tensor | None] | None = None,
) -> torch.Tensor | None:
    """One new position through a pre-LayerNorm GPT-2 block, in one call (one OpenMP region):
    x1 = x + c_proj(attention(c_attn(ln_1(x)))), y = x1 + mlp.c_proj(GELU(c_fc(ln_2(x1)))),
    storing this position's key and value in the cache at pos.

    x (B, 1, C); params: the BLOCK_PARAMETERS tensors in that order, weights stored (in, out)
    (a None bias or LayerNorm parameter: none); k_cache, v_cache (B, nh, L, hs); mask (B, pos
    + 1) bool or None; eps: ln_1's and ln_2's; scales: for each of the four products None, or
    its int8 weight's per-output scales (N,) (the weight then int8 (out, in), as Int8Linear
    keeps it; float32 blocks only). All float32, or all bfloat16 (float32 inside, rounded to
    bfloat16 where PyTorch's bfloat16 operations round; the GELU is PyTorch's there, whose
    bfloat16 results the kernel's more exact one would not always round to). Returns y (B, 1,
    C), or None where the kernel cannot take it (not built, other dtypes or shapes, not
    contiguous, not on a CPU), for the caller to run the block's own forward. Sums in another
    order than PyTorch's: equal to rounding (tests/model/test_fast.py)."""
    scales = scales or [None] * len(_PRODUCTS)
    lib = library()
    F = _mlp_width(x, params, scales, k_cache, v_cache, pos, mask)
    if lib is None or F is None:
        return None
    if mask is not None:
        mask = mask.to(torch.uint8).contiguous()
    B, _, C = x.shape
    H, L = k_cache.size(1), k_cache.size(2)
    dtype = x.dtype
    x = x.contiguous()
    threads = torch.get_num_threads()
    bf16 = dtype is torch.bfloat16
    work = _scratch(lib.gptlab_block_step_floats(B, C, F, threads, bf16))
    y = torch.empty(B, 1, C, dtype=dtype, device="cpu")  # bfloat16: x1, the MLP's input
    fc = torch.empty(B, 1, F, dtype=dtype, device="cpu") if bf16 else None
    pointers = (ctypes.c_void_p * (BLOCK_PARAMETERS + len(_PRODUCTS)))(
        *(None if t is None else t.data_ptr() for t in (*params, *scales))
    )
    lib.gptlab_block_step(
        x.data_ptr(),
        y.data_ptr(),
        None if fc is None else fc.data_ptr(),
        pointers,
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        None if mask is None else mask.data_ptr(),
        work.data_ptr(),
        B,
        C,
        F,
        H,
        L,
        pos,
        eps[0],
        eps[1],
        threads,
        bf16,
    )
    if fc is not None:  # (bfloat16) the step stopped after c_fc: PyTorch's GELU, then the product
        g = torch.nn.functional.gelu(fc, approximate="tanh")
        return matmul(g, params[10], params[11], y)
    return y


def _mlp_width(
    x: torch.Tensor,
    params: list[torch.Tensor | None],
    scales: list[torch.Tensor | None],
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: int,
    mask: torch.Tensor | None,
) -> int | None:
    """The MLP's width F where block_step's kernel can take these arguments (dtypes, shapes,
    contiguous, on a CPU: it reads them through raw pointers), else None."""
    dtype = x.dtype
    if dtype not in KERNEL_DTYPES or not x.is_cpu or x.dim() != 3 or x.size(1) != 1:
        return None
    if len(params) != BLOCK_PARAMETERS or len(scales) != len(_PRODUCTS):
        return None
    int8 = {i: scale for i, scale in zip(_PRODUCTS, scales, strict=True) if scale is not None}
    if (int8 and dtype is not torch.float32) or any(params[i] is None for i in _PRODUCTS):
        return None
    if params[8].dim() != 2 or k_cache.dim() != 4:
        return None
    B, _, C = x.shape
    F = params[8].size(0) if 8 in int8 else params[8].size(-1)
    shapes = {  # each parameter's shape (a float weight's; an int8 one is stored transposed)
        0: (C,), 1: (C,), 2: (C, 3 * C), 3: (3 * C,), 4: (C, C), 5: (C,),
        6: (C,), 7: (C,), 8: (C, F), 9: (F,), 10: (F, C), 11: (C,),
    }  # fmt: skip
    for i, t in enumerate(params):
        kind, shape = (torch.int8, shapes[i][::-1]) if i in int8 else (dtype, shapes[i])
        if t is not None and (t.dtype is not kind or t.shape != shape or not _plain(t)):
            return None
    for i, scale in int8.items():
        if scale.dtype is not torch.float32 or scale.shape != shapes[i][1:] or not _plain(scale):
            return None
    H, L = k_cache.size(1), k_cache.size(2)
    if any(cache.dtype is not dtype or not _plain(cache) for cache in (k_cache, v_cache)):
        return None
    if H == 0 or C % H or C // H > MAX_HEAD or k_cache.shape != (B, H, L, C // H):
        return None
    if v_cache.shape != k_cache.shape or not 0 <= pos < L:
        return None
    if mask is not None and (
        mask.dtype is not torch.bool or mask.shape != (B, pos + 1) or not mask.is_cpu
    ):
        return None
    return F


def _plain(t: torch.Tensor) -> bool:
    """On the CPU and contiguous: what a raw pointer can read."""
    return t.is_cpu and t.is_contiguous()


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


MAX_SEQUENCE = 512  # the longest T causal_attention takes: faster than flash up to it, not at 1024


class _CausalAttention(torch.autograd.Function):
    """causal_attention with its backward through the kernel; the forward keeps qkv, y and
    each row's log-sum-exp (B, H, T), from which the backward recomputes the probabilities."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, n_head: int) -> torch.Tensor:
        y, lse = _attention_forward(qkv, n_head)
        ctx.save_for_backward(qkv, y, lse)
        ctx.n_head = n_head
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        qkv, y, lse = ctx.saved_tensors
        if torch.is_grad_enabled() or grad.dtype is not torch.float32 or not grad.is_cpu:
            # a double backward (create_graph=True) needs a backward autograd can
            # differentiate: the written-out attention's, then (and anything unexpected)
            with torch.enable_grad():
                again = _attention_written_out(qkv, ctx.n_head)
            return torch.autograd.grad(again, qkv, grad, create_graph=True)[0], None
        grad = grad.contiguous()
        B, T, C3 = qkv.shape
        H, D = ctx.n_head, C3 // 3 // ctx.n_head
        lib = _vector_library()
        threads = torch.get_num_threads()
        work = _scratch(threads * lib.gptlab_attention_floats(T, D))
        dqkv = torch.empty_like(qkv)
        lib.gptlab_attention_backward(
            grad.data_ptr(),
            qkv.data_ptr(),
            y.data_ptr(),
            lse.data_ptr(),
            dqkv.data_ptr(),
            work.data_ptr(),
            B,
            T,
            H,
            D,
            threads,
        )
        return dqkv, None


def _attention_forward(qkv: torch.Tensor, n_head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's forward: qkv (B, T, 3C) -> y (B, T, C), log-sum-exp (B, H, T)."""
    B, T, C3 = qkv.shape
    D = C3 // 3 // n_head
    lib = _vector_library()
    threads = torch.get_num_threads()
    work = _scratch(threads * lib.gptlab_attention_floats(T, D))
    y = torch.empty(B, T, C3 // 3, dtype=torch.float32, device="cpu")
    lse = torch.empty(B, n_head, T, dtype=torch.float32, device="cpu")
    lib.gptlab_attention_forward(
        qkv.data_ptr(), y.data_ptr(), lse.data_ptr(), work.data_ptr(), B, T, n_head, D, threads
    )
    return y, lse


def _attention_written_out(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """Causal attention of qkv (B, T, 3C) -> (B, T, C) in plain operations, which autograd can
    differentiate any number of times (PyTorch's CPU flash kernel has no second derivative):
    the double backward's path."""
    B, T, C3 = qkv.shape
    q, k, v = (t.view(B, T, n_head, -1).transpose(1, 2) for t in qkv.split(C3 // 3, dim=2))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    future = torch.ones(T, T, dtype=torch.bool, device=qkv.device).triu(1)
    y = scores.masked_fill(future, float("-inf")).softmax(-1) @ v
    return y.transpose(1, 2).reshape(B, T, C3 // 3)


def causal_attention(qkv: torch.Tensor, n_head: int) -> torch.Tensor | None:
    """Causal self-attention of whole sequences, forward and backward in the kernel: qkv (B, T,
    3C), c_attn's output (queries, keys, values, heads side by side) -> (B, T, C), each head's
    softmax(q k^T / sqrt(hs)) v over the positions up to its own, heads side by side (what
    c_proj reads). For the sequences small models train on (T <= MAX_SEQUENCE, head size a
    multiple of 8), float32 on a CPU: 1.1-1.7x PyTorch's flash kernel forward and backward
    there (benchmarks/attention.py); the definition to float32 rounding
    (tests/model/test_kernels.py). None where it cannot take the input, for the caller to run
    scaled_dot_product_attention: other dtypes, devices, layouts or shapes, longer sequences,
    no vector build, and (as gelu_tanh) under torch.compile, tracing and torch.func."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    if qkv.dtype is not torch.float32 or not qkv.is_cpu or not qkv.is_contiguous():
        return None
    if qkv.dim() != 3 or n_head < 1 or qkv.size(2) % (3 * n_head):
        return None
    B, T, C3 = qkv.shape
    if not 0 < T <= MAX_SEQUENCE or (C3 // 3 // n_head) % 8 or B == 0 or C3 == 0:
        return None
    if torch._C._functorch.is_functorch_wrapped_tensor(qkv) or _forward_ad_active():
        return None
    if _vector_library() is None:
        return None
    if qkv.requires_grad and torch.is_grad_enabled():
        return _CausalAttention.apply(qkv, n_head)
    return _attention_forward(qkv, n_head)[0]
