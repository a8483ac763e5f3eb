"""Cheaper verify shapes on the CPU.

A verify pass feeds k+1 tokens (2-17 rows) through every linear layer. On x86 CPUs the BLAS path that
``F.linear`` takes for so few rows re-reads (packs) the weight matrix and costs about twice a one-row step, which
makes every draft expensive. Computing the same product as ``(W @ x^T)^T`` streams each weight once, so a verify
over a few tokens costs about what a plain decode step costs (measured on SmolLM2-135M, 2 cores: 2 tokens
1.85x -> 0.95x of a plain step, 5 tokens 2.05x -> 1.0x, 9 tokens 2.5x -> 1.5x).

The math is the same product, so greedy outputs stay identical to plain ``generate`` (the equality tests run with
it on). It is used only inside specdecode's own verify forwards, only on CPU tensors, only for 2..MAX_ROWS rows;
GPUs keep their own kernels. ``SPECDECODE_FEW_ROWS_LINEAR=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F

MAX_ROWS = 32
FEW_ROWS_LINEAR = os.environ.get("SPECDECODE_FEW_ROWS_LINEAR", "1").strip().lower() not in {"0", "false", "no", "off"}
_original_linear = F.linear
_local = threading.local()


def _few_rows_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if getattr(_local, "active", False) and input.device.type == "cpu" and weight.dim() == 2 and input.dim() >= 2:
        rows = input.numel() // input.shape[-1]
        if 1 < rows <= MAX_ROWS and input.dtype == weight.dtype:
            flat = input.reshape(rows, input.shape[-1])
            out = torch.mm(weight, flat.t()).t().contiguous()  # [rows, out]: one pass over the weight
            if bias is not None:
                out = out + bias
            return out.reshape(*input.shape[:-1], weight.shape[0])
    return _original_linear(input, weight, bias)


@contextlib.contextmanager
def few_rows_linear(enabled: bool = True) -> Iterator[None]:
    """Within this block (this thread only), CPU linear layers over 2..MAX_ROWS rows use ``W @ x^T``."""
    if not enabled:
        yield
        return
    if F.linear is not _few_rows_linear:
        # Installed once; outside an active block (and in other threads) it defers to the original at once.
        F.linear = _few_rows_linear
    previous = getattr(_local, "active", False)
    _local.active = True
    try:
        yield
    finally:
        _local.active = previous
