"""Elementwise chains compiled into fused GPU kernels: one read of each input and one write, instead of a pass
over memory per operation. Used only on CUDA tensors; the CPU runs the same functions eagerly."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch


@lru_cache(maxsize=None)
def fused(fn: Callable) -> Callable:
    """``fn`` compiled once per process (dynamic shapes, so new sizes do not recompile)."""
    return torch.compile(fn, dynamic=True)


def on_device(fn: Callable, x: torch.Tensor) -> Callable:
    """``fn`` fused where ``x`` lives on a GPU, else ``fn`` itself."""
    return fused(fn) if x.is_cuda else fn
