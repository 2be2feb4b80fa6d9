"""The result of quantizing one weight matrix: integer codes, per-group scales and zeros."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .grid import dequantize


@dataclass
class QuantizedWeight:
    """Codes ``[out, in]`` in 0..2^b-1, ``scale``/``zero`` ``[out, groups]``, ``g_idx`` ``[in]`` (group of
    each input column; non-trivial only with act-order and groups)."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        """w_hat[:, c] = s[:, g(c)] (q[:, c] - z[:, g(c)])."""
        g = self.g_idx.long()
        return dequantize(self.codes.to(self.scale.dtype), self.scale[:, g], self.zero[:, g])


def contiguous_g_idx(cols: int, group_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Group index of each column when groups are consecutive blocks (group_size -1: all zero)."""
    idx = torch.arange(cols, device=device, dtype=torch.int32)
    return torch.zeros_like(idx) if group_size == -1 else idx // group_size


def weight_loss(w: torch.Tensor, what: torch.Tensor, h: torch.Tensor) -> float:
    """Layer loss tr(dW H dW^T) with dW = W_hat - W."""
    d = (what - w).to(h.dtype)
    return float(torch.einsum("oi,ij,oj->", d, h, d))
