"""Plain-torch definition of the dequant-GEMM: the reference every kernel is tested against."""

from __future__ import annotations

import torch

from turboboa_export.algorithms.grid import dequantize
from turboboa_export.export.pack import unpack_rows

from .layout import DequantWeight


def dequantize_ref(w: DequantWeight) -> torch.Tensor:
    """W [N, K] in float64: (u - z) * scale per group."""
    u = unpack_rows(w.packed.cpu(), w.bits, w.in_features).double()
    per_column = lambda t: t.cpu().double().repeat_interleave(w.group_size, 1)  # noqa: E731  [N, groups] -> [N, K]
    zero = torch.full_like(u, 2.0 ** (w.bits - 1)) if w.zero is None else per_column(w.zero)
    return dequantize(u, per_column(w.scale), zero)


def dequant_gemm_ref(x: torch.Tensor, w: DequantWeight) -> torch.Tensor:
    """y = x W^T computed in float64, returned in x's dtype and device; x [..., K]."""
    y = x.cpu().double() @ dequantize_ref(w).T
    return y.to(dtype=x.dtype, device=x.device)


def quantize_act_ref(x: torch.Tensor, bits: int, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric codes of x [M, K] in float64: (q [M, K] integers in [-2^(b-1), 2^(b-1) - 1] as float64,
    s_x [M, 1]) with s_x = clip max|x| / (2^(b-1) - 1), 1 where a row is all zeros."""
    qmax = 2 ** (bits - 1) - 1
    xd = x.cpu().double()
    s = clip * xd.abs().amax(-1, keepdim=True) / qmax
    s[s == 0] = 1.0
    return torch.clamp(torch.round(xd / s), -qmax - 1, qmax), s


def int_gemm_ref(q: torch.Tensor, s_x: torch.Tensor, w: DequantWeight) -> torch.Tensor:
    """y[m, n] = s_x[m] sum_k q[m, k] (u[n, k] - 8) s_w[n, g(k)] in float64, for symmetric 4-bit ``w``; q [M, K]."""
    return (q.cpu().double() @ dequantize_ref(w).T) * s_x.cpu().double()
