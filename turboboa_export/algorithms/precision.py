"""Where statistics' matrix products may run on half-precision tensor cores.

A model whose activations are fp16/bf16 computes its own products from half-precision inputs with float32
accumulation; the statistics summed from those activations may do the same on a GPU: the activations are
exact in their own dtype, the products of two halves are exact in float32, and only the sums round.
Float32/float64 models and the CPU keep full-precision products. TurboBoA's F2/F3 corrections built from such
statistics may take TF32 inputs (``tf32_matmuls``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


def half_products(x: torch.Tensor) -> torch.dtype | None:
    """The half dtype for statistics' products of activations like ``x`` (a CUDA fp16/bf16 tensor), else None."""
    return x.dtype if x.is_cuda and x.dtype in HALF_DTYPES else None


def stats_matmul(a: torch.Tensor, b: torch.Tensor, half: torch.dtype | None) -> torch.Tensor:
    """a @ b (broadcast over leading dims). With ``half``: the inputs rounded to it, products summed and returned in
    float32 (tensor cores); without: in a's and b's own dtype."""
    if half is None:
        return a @ b
    a, b = a.to(half), b.to(half)
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b3 = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    return torch.bmm(a3, b3, out_dtype=torch.float32).reshape(*batch, a.shape[-2], b.shape[-1])


def accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, half: torch.dtype | None) -> torch.Tensor:
    """acc + a @ b, the sum taken inside the GEMM (no separate pass over acc). With ``half`` (2-D, float32 acc):
    inputs rounded to it, float32 sums, returned as a new tensor; without: in place (a batched acc takes 2-D or
    batched a and b) and returned."""
    if half is not None:
        return torch.addmm(acc, a.to(half), b.to(half), out_dtype=torch.float32)
    if acc.dim() == 2:
        return acc.addmm_(a, b)
    return acc.baddbmm_(a.expand(len(acc), *a.shape[-2:]), b.expand(len(acc), *b.shape[-2:]))


@contextmanager
def tf32_matmuls(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Inside the block, float32 matmuls on a CUDA ``device`` take TF32 inputs (10 mantissa bits) and accumulate
    in float32, when ``enabled``. Elsewhere (CPU, float64, disabled) nothing changes."""
    if device.type != "cuda" or not enabled:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
