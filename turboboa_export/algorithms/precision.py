"""Where float32 matmuls may run on TF32 tensor cores."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def tf32_matmuls(device: torch.device) -> Iterator[None]:
    """Inside the block, float32 matmuls on a CUDA ``device`` use TF32 inputs (10-bit mantissa) with float32
    accumulation; used for the large sums behind statistics and grid scores, never for the column updates.
    Elsewhere (CPU, float64) nothing changes."""
    if device.type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
