"""Cheaper decode and verify shapes on the CPU.

A decode step feeds 1 token row, a verify pass k+1 rows (2-17), through every linear layer. That product is
memory-bound: each weight is read from DRAM once per step and the arithmetic is small. On x86 CPUs the BLAS paths
``F.linear`` takes for so few rows fall well short of that. Measured on SmolLM2-135M (2 AMD EPYC cores, 21 GB/s):
all linear layers of one step take ~69 ms through ``F.linear`` for 1 row, ~90 ms for 6 rows, where reading the
weights once takes ~25 ms. A verify over 6 tokens then costs ~1.5 plain steps, which makes every draft expensive.

Two replacements, used only for the linear layers of the models specdecode's loop runs (``few_rows_linear(model,
...)`` routes their ``nn.Linear`` layers for the duration of a generation and restores them after), only on CPU
float32 tensors, only for 1..MAX_ROWS rows; GPUs keep their own kernels:

* ``native`` (the default where it can be built): a small C kernel (csrc/few_rows_linear.c, AVX2 + FMA, OpenMP)
  that streams each weight row once for up to 8 token rows (more rows: groups of equal size), requesting weight
  rows a few ahead so DRAM keeps streaming while 5-8 rows' arithmetic runs. It is compiled on first use with the
  system C compiler into the cache directory (~1 s) and loaded with ctypes. 1-6 rows cost about what reading the weights costs, so a
  verify over a few drafts costs about what a decode step costs. Without a compiler, on other CPUs, or when the
  build fails (one warning says why), the ``torch`` path is used.
* ``torch``: ``(W @ x^T)^T`` for 2..MAX_ROWS rows, which streams each weight once through MKL (2 tokens
  1.85x -> ~1.1x of a plain step, 6 tokens ~2x -> ~1.5x); a single row keeps ``F.linear``.

Both compute the same dot products in another summation order, as any change of GEMM shape does, so greedy
outputs stay identical to plain ``generate`` (the equality tests and benchmarks run with them on).
``SPECDECODE_FEW_ROWS_LINEAR`` chooses: ``native`` (default; falls back to ``torch``), ``torch``, or ``off`` (the
way to compare: transformers' own products everywhere). Plain ``model.generate`` is never changed; run it inside
``few_rows_linear(model)`` to give it the same kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

MAX_ROWS = 32
MODES = ("native", "torch", "off")
_SOURCE = Path(__file__).with_name("csrc") / "few_rows_linear.c"
_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
_local = threading.local()
_native_fn = None  # the loaded C function, once built
_native_state = "untried"  # untried | ready | unavailable
_native_lock = threading.Lock()


def _mode_from_env() -> str:
    value = os.environ.get("SPECDECODE_FEW_ROWS_LINEAR", "native").strip().lower()
    if value in {"0", "false", "no", "off"}:
        return "off"
    if value == "torch":
        return "torch"
    return "native"  # "1", "native", anything else: the best available


MODE = _mode_from_env()


def _cpu_supported() -> bool:
    if platform.machine().lower() not in {"x86_64", "amd64"} or sys.platform == "win32":
        return False
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch: no way to ask, so do not guess
        return False
    return capability.upper().startswith(("AVX2", "AVX512"))


def _library_path() -> Path:
    from .models import cache_dir  # late: models imports transformers pieces this module does not need

    digest = hashlib.sha256(_SOURCE.read_bytes() + " ".join(_FLAGS).encode()).hexdigest()[:12]
    return cache_dir() / "kernels" / f"few_rows_linear-{digest}-{platform.machine()}.so"


def _build(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *_FLAGS, str(_SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        os.replace(tmp, target)  # atomic: a concurrent build never loads half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_native():
    """The C kernel, built on first use; None where it cannot be (one warning says why)."""
    global _native_fn, _native_state
    if _native_state != "untried":
        return _native_fn
    with _native_lock:
        if _native_state != "untried":
            return _native_fn
        if not _cpu_supported():
            _native_state = "unavailable"
            return None
        try:
            path = _library_path()
            if not path.exists():
                _build(path)
            # torch has already loaded its libgomp, which the kernel's OpenMP calls bind to: one thread pool.
            lib = ctypes.CDLL(str(path))
            fn = lib.specdecode_few_rows_linear
            fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_int]
            fn.restype = ctypes.c_int
            _native_fn = fn
            _native_state = "ready"
        except Exception as exc:
            _native_state = "unavailable"
            warnings.warn(
                f"specdecode: the native few-rows linear kernel is unavailable ({exc}); using the torch path. "
                "Set SPECDECODE_FEW_ROWS_LINEAR=torch to skip the build.",
                RuntimeWarning,
                stacklevel=3,
            )
    return _native_fn


def backend() -> str:
    """The path ``few_rows_linear()`` takes on CPU tensors here: 'native', 'torch' or 'off'."""
    if MODE == "native":
        return "native" if _load_native() is not None else "torch"
    return MODE


def _native_linear(flat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """``flat [rows, in] @ weight[out, in]^T`` by the C kernel, or None when it cannot take these tensors. The C
    function reads raw pointers, so every shape, dtype, device and layout it assumes is checked here first."""
    fn = _native_fn
    if (
        fn is None
        or flat.dim() != 2
        or weight.dim() != 2
        or flat.dtype != torch.float32
        or weight.dtype != torch.float32
        or flat.device.type != "cpu"
        or weight.device.type != "cpu"
        or not weight.is_contiguous()
        or weight.shape[1] != flat.shape[1]
        or not 1 <= flat.shape[0] <= MAX_ROWS
        or weight.shape[0] < 1
    ):
        return None
    rows, features = flat.shape
    flat = flat.contiguous()
    out = torch.empty(rows, weight.shape[0], dtype=torch.float32)
    if fn(flat.data_ptr(), weight.data_ptr(), out.data_ptr(), rows, features, weight.shape[0], torch.get_num_threads()):
        return None
    return out


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through the few-rows path inside an active :func:`few_rows_linear` block of this thread (for
    products a proposer computes on weights directly, e.g. a head scoring a subset of the LM head's rows)."""
    active = getattr(_local, "active", None)
    if active and input.device.type == "cpu" and weight.dim() == 2 and input.dim() >= 1:
        rows = input.numel() // max(input.shape[-1], 1)
        if 1 <= rows <= MAX_ROWS and input.dtype == weight.dtype:
            flat = input.reshape(rows, input.shape[-1])
            out = None
            if active == "native" and not (
                torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad)
            ):
                out = _native_linear(flat, weight)
            if out is None and rows > 1:
                out = torch.mm(weight, flat.t()).t().contiguous()  # [rows, out]: one pass over the weight
            if out is not None:
                if bias is not None:
                    out = out + bias
                return out.reshape(*input.shape[:-1], weight.shape[0])
    return F.linear(input, weight, bias)


def _linear_forward(layer: torch.nn.Linear, input: torch.Tensor) -> torch.Tensor:
    return linear(input, layer.weight, layer.bias)


@contextlib.contextmanager
def few_rows_linear(*modules: torch.nn.Module, mode: str | None = None) -> Iterator[None]:
    """Within this block, the linear layers of ``modules`` (and :func:`linear` calls) in this thread route CPU
    products over 1..MAX_ROWS rows to the cheaper path. Only plain ``torch.nn.Linear`` layers are touched (not
    subclasses with their own forward), and they are restored when the block ends, also on an exception.

    ``mode`` overrides ``SPECDECODE_FEW_ROWS_LINEAR`` ('native', 'torch' or 'off') for this block.
    """
    chosen = MODE if mode is None else mode
    if chosen not in MODES:
        raise ValueError(f"few_rows_linear mode must be one of {', '.join(MODES)}; got {chosen!r}")
    if chosen == "native" and _load_native() is None:
        chosen = "torch"
    if chosen == "off":
        yield
        return
    patched = []
    for module in modules:
        for layer in module.modules():
            # A layer already routed by an enclosing block stays as it is (and is restored by that block).
            if type(layer).forward is torch.nn.Linear.forward and "forward" not in layer.__dict__:
                layer.forward = types.MethodType(_linear_forward, layer)
                patched.append(layer)
    previous = getattr(_local, "active", None)
    _local.active = chosen
    try:
        yield
    finally:
        _local.active = previous
        for layer in patched:
            del layer.forward
