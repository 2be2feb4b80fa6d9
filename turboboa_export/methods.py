"""Quantization methods by name: how each one turns a block's statistics into quantized linears."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .algorithms.gptq import damp, gptq_quantize, token_damping
from .algorithms.grid import GridSpec
from .algorithms.quantized import QuantizedWeight, weight_loss
from .algorithms.rtn import rtn_quantize
from .algorithms.turboboa import TurboBoAOptions, turboboa_one_sided, turboboa_two_sided
from .config import QuantConfig
from .errors import TbqError
from .pipeline.attention_stats import AttentionStatistics


def grid_spec(cfg: QuantConfig) -> GridSpec:
    return GridSpec(cfg.bits, cfg.sym, cfg.grid)


COMMON_SETTINGS = ("method", "bits", "group_size", "sym", "ignore", "rules")
DAMP_SETTINGS = ("damp", "sample_damp")


def damping(cfg: QuantConfig, h: torch.Tensor, tokens: int) -> float:
    """The relative damping of ``h`` ([..., d, d], summed over ``tokens`` calibration tokens) under ``cfg``:
    damp + sample_damp * d / tokens (``token_damping``)."""
    return token_damping(cfg.damp, cfg.sample_damp, h.shape[-1], tokens)


@dataclass(frozen=True)
class Method:
    """A method: the settings it reads (beyond COMMON_SETTINGS), whether it needs R and attention statistics, and
    how it quantizes one linear."""

    name: str
    quantize: Callable  # (role, w, stats, cfg, shape) -> (QuantizedWeight, loss)
    settings: Callable[[QuantConfig], tuple[str, ...]]
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
    q = rtn_quantize(w, grid_spec(cfg), cfg.group_size, damp(h, damping(cfg, h, stats.tokens(role))))
    return q, weight_loss(w, q.dequantize(), h)


def _gptq(role: str, w: torch.Tensor, stats, cfg: QuantConfig, shape) -> tuple[QuantizedWeight, float]:
    h = stats.h(role)
    q = gptq_quantize(w, h, grid_spec(cfg), cfg.group_size, damping(cfg, h, stats.tokens(role)), cfg.act_order)
    return q, weight_loss(w, q.dequantize(), h)


register(Method("rtn", _rtn, lambda cfg: ("grid",) + DAMP_SETTINGS if cfg.grid == "hessian" else ("grid",)))
register(Method("gptq", _gptq, lambda cfg: ("grid",) + DAMP_SETTINGS + ("act_order",)))


def adaptive_grid(cfg: QuantConfig) -> bool:
    """Whether each row block takes its grid from its current weights (TurboBoA F3): ``cfg.adaptive_grid``, or when
    unset the method's own choice (turboboa yes; boa no, the official BoA fixing its grid from the original weights)."""
    return cfg.method == "turboboa" if cfg.adaptive_grid is None else cfg.adaptive_grid


def turboboa_options(cfg: QuantConfig, percdamp: float, percdamp_out: float | None = None,
                     tf32: bool = False) -> TurboBoAOptions:
    """F1/F3 settings of a config with the relative dampings of H_in and H_out (``damping``); ``boa`` is N = 1 with
    no refinement and, unless ``adaptive_grid`` is set, the official BoA's grid fixed from the original weights.
    ``tf32``: the statistics come from fp16/bf16 activations on a GPU, so the F2/F3 corrections may use TF32."""
    if cfg.method == "boa":
        return TurboBoAOptions(1, adaptive_grid(cfg), 0, cfg.act_order, cfg.row_act_order, percdamp, tf32,
                               percdamp_out)
    return TurboBoAOptions(cfg.rows, adaptive_grid(cfg), cfg.refine_iters, cfg.act_order, cfg.row_act_order,
                           percdamp, tf32, percdamp_out)


def _alpha(cfg: QuantConfig) -> float:
    return cfg.alpha if cfg.method == "turboboa" else 0.0


def _scaled(r: torch.Tensor | None, alpha: float) -> torch.Tensor | None:
    return alpha * r if alpha and r is not None else None


def _two_sided_loss(w, what, h_in, h_out) -> float:
    """sum over heads of tr(H_out dW H_in dW^T)."""
    d = (what - w).reshape(h_out.shape[0], h_out.shape[1], -1).to(h_in.dtype)
    return float(torch.einsum("hab,hbi,ij,haj->", h_out, d, h_in, d))


def _attention_aware(role: str, w: torch.Tensor, stats, cfg: QuantConfig, shape) -> tuple[QuantizedWeight, float]:
    spec, alpha = grid_spec(cfg), _alpha(cfg)
    attn = stats.attention
    if role in ("q", "k"):
        h_out = attn.h_out_q() if role == "q" else attn.h_out_k()
        h_in = stats.h(role)
        opts = turboboa_options(cfg, damping(cfg, h_in, stats.tokens(role)), damping(cfg, h_out, attn.tokens),
                                stats.half)
        q = turboboa_two_sided(w.reshape(h_out.shape[0], -1, w.shape[1]), h_in, h_out, spec, cfg.group_size,
                               _scaled(stats.r(role), alpha), opts)
        return q, _two_sided_loss(w, q.dequantize(), h_in, h_out)
    if role == "v":
        # one batched pass over the kv heads, each with its attention-weighted H_in (and R)
        h_v = attn.h_in_v()
        opts = turboboa_options(cfg, damping(cfg, h_v, attn.tokens), tf32=stats.half)
        w3 = w.reshape(shape.kv_heads, shape.head_dim, -1)
        q3 = turboboa_one_sided(w3, h_v, spec, cfg.group_size, _scaled(attn.r_v(), alpha), opts)
        q = QuantizedWeight(q3.codes.reshape(w.shape), q3.scale.reshape(w.shape[0], -1),
                            q3.zero.reshape(w.shape[0], -1), q3.g_idx)
        d = (q.dequantize() - w).reshape(w3.shape).to(h_v.dtype)
        return q, float(torch.einsum("hai,hij,haj->", d, h_v, d))  # sum over kv heads of tr(dW H_v dW^T)
    h = stats.h(role)
    opts = turboboa_options(cfg, damping(cfg, h, stats.tokens(role)), tf32=stats.half)
    q = turboboa_one_sided(w, h, spec, cfg.group_size, _scaled(stats.r(role), alpha), opts)
    return q, weight_loss(w, q.dequantize(), h)


def _attention_statistics(cfg: QuantConfig, spec, shape):
    def make(block):
        return AttentionStatistics(block.get_submodule(spec.attn), spec, shape, with_r=_alpha(cfg) > 0,
                                   centred_keys=cfg.centred_keys)

    return make


BOA_SETTINGS = ("grid",) + DAMP_SETTINGS + ("act_order", "row_act_order", "adaptive_grid", "centred_keys")
TURBOBOA_SETTINGS = BOA_SETTINGS + ("rows", "alpha", "refine_iters")
register(Method("boa", _attention_aware, lambda cfg: BOA_SETTINGS, attention_statistics=_attention_statistics))
register(Method("turboboa", _attention_aware, lambda cfg: TURBOBOA_SETTINGS,
                needs_r=lambda cfg: cfg.alpha > 0, attention_statistics=_attention_statistics))


def used_settings(cfg: QuantConfig) -> dict:
    """``cfg`` as JSON, with only the settings that its method and its rules' methods read: what ``run.json``
    records (a setting a method ignores, e.g. ``alpha`` of gptq, cannot change the bits, so it is left out; a rule
    keeps only the settings it sets)."""
    configs = [cfg] + [cfg.model_copy(update=r.overrides()) for r in cfg.rules]
    keep = set(COMMON_SETTINGS).union(*(get_method(c.method).settings(c) for c in configs))
    rules = [r.model_dump(mode="json", exclude_none=True) for r in cfg.rules]  # as written: pattern and what it sets
    out = cfg.model_dump(mode="json", include=keep) | {"rules": rules}
    if "adaptive_grid" in out:  # the grid the run's method uses, not "its default"
        out["adaptive_grid"] = adaptive_grid(cfg)
    return out
