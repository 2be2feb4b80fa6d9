"""Where float32 matmuls may run on TF32 tensor cores."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


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


def half_activations(x: torch.Tensor) -> bool:
    """True for fp16/bf16 activations: the model's own arithmetic is then no finer than TF32, so statistics
    summed from them may use TF32 (exactly, for the activations themselves)."""
    return x.dtype in HALF_DTYPES
