"""Round-to-nearest: each weight onto its grid, no error feedback."""

from __future__ import annotations

import torch

from .grid import GridSpec, find_params_2d, quantize
from .quantized import QuantizedWeight, contiguous_g_idx


def rtn_quantize(w: torch.Tensor, spec: GridSpec, group_size: int = -1, h: torch.Tensor | None = None) -> QuantizedWeight:
    """q = clamp(round(w/s) + z, 0, 2^b - 1) with the grid found by ``spec.search`` (``h`` for hessian)."""
    rows, cols = w.shape
    scale, zero = find_params_2d(w, spec, group_size, h)
    g_idx = contiguous_g_idx(cols, group_size, w.device)
    codes = quantize(w, scale[:, g_idx.long()], zero[:, g_idx.long()], spec.maxq)
    return QuantizedWeight(codes, scale, zero, g_idx)
