"""Quantization methods by name: how each one turns a block's statistics into quantized linears."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .algorithms.gptq import damp, gptq_quantize
from .algorithms.grid import GridSpec
from .algorithms.quantized import QuantizedWeight, weight_loss
from .algorithms.rtn import rtn_quantize
from .config import QuantConfig
from .errors import TbqError


def grid_spec(cfg: QuantConfig) -> GridSpec:
    return GridSpec(cfg.bits, cfg.sym, cfg.grid)


@dataclass(frozen=True)
class Method:
    """A method: whether it needs R and attention statistics, and how it quantizes one linear."""

    name: str
    quantize: Callable  # (role, w, stats, cfg, shape) -> (QuantizedWeight, loss)
    needs_r: Callable[[QuantConfig], bool] = lambda cfg: False
    attention_statistics: Callable = lambda cfg, spec, shape: None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise TbqError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def _rtn(role: str, w: torch.Tensor, stats, cfg: QuantConfig, shape) -> tuple[QuantizedWeight, float]:
    h = stats.h(role)
    q = rtn_quantize(w, grid_spec(cfg), cfg.group_size, damp(h, cfg.damp))
    return q, weight_loss(w, q.dequantize(), h)


def _gptq(role: str, w: torch.Tensor, stats, cfg: QuantConfig, shape) -> tuple[QuantizedWeight, float]:
    h = stats.h(role)
    q = gptq_quantize(w, h, grid_spec(cfg), cfg.group_size, cfg.damp, cfg.act_order)
    return q, weight_loss(w, q.dequantize(), h)


register(Method("rtn", _rtn))
register(Method("gptq", _gptq))
