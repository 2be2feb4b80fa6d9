"""What runs at inference on top of the rotated weights: the online Hadamard on down_proj's input and, for W4A4,
per-token symmetric fake quantization of every quantized linear's input (lm_head excluded), as forward pre-hooks
(the Hadamard first), so calibration statistics see exactly what the quantized layers will see. For KV-cache
quantization (``kv_bits``) the attention runs through a registered transformers attention function: keys and
values fake-quantized per token and head after an online Hadamard on post-RoPE queries and keys (rotated models;
(q H)(k H)^T = q k^T), then PyTorch's scaled-dot-product attention.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import ArchSpec
from .hadamard import apply_hadamard, apply_online_rotation


def activation_codes(x: torch.Tensor, bits: int, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric codes of x [..., K]: (q, s) with s = clip max|x| / (2^(b-1) - 1) [..., 1] (1 for an all-zero
    token) and q = clamp(round(x / s), -2^(b-1), 2^(b-1) - 1) [..., K] (integers, as floats); fp16/bf16 inputs are
    quantized in float32, as the served kernels do (tbq_kernels.int_act, tbq_kernels.decode_gemm)."""
    qmax = 2 ** (bits - 1) - 1
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    s = clip * xf.abs().amax(-1, keepdim=True) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    return torch.clamp(torch.round(xf / s), -qmax - 1, qmax), s


def quantize_activations(x: torch.Tensor, bits: int, clip: float) -> torch.Tensor:
    """x_hat = s q of :func:`activation_codes` (fake quantization), in x's dtype."""
    q, s = activation_codes(x, bits, clip)
    return (q * s).to(x.dtype)


@dataclass
class OnlineTransforms:
    """What the installed hooks read; ``act_quant_off()`` runs the model with activations (and K/V) unquantized
    (the full-precision stream of calibration), the online Hadamards staying on."""

    act_bits: int | None
    act_clip: float
    kv_bits: int | None = None
    qk_hadamard: bool = False
    act_quant_on: bool = True

    @contextmanager
    def act_quant_off(self):
        before, self.act_quant_on = self.act_quant_on, False
        try:
            yield
        finally:
            self.act_quant_on = before


KV_ATTENTION = "tbq_kv"
KV_CLIP = 1.0  # keys and values keep their full range


def kv_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA attention after the q/k Hadamard and K/V fake quantization set on ``module.tbq_kv``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    t = getattr(module, "tbq_kv", None)
    if t is not None:
        if t.qk_hadamard:
            query, key = apply_hadamard(query), apply_hadamard(key)
        if t.kv_bits and t.act_quant_on:
            key, value = quantize_activations(key, t.kv_bits, KV_CLIP), quantize_activations(value, t.kv_bits, KV_CLIP)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register_kv_attention() -> None:
    """Make ``tbq_kv`` a transformers attention implementation (with SDPA's masks); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(KV_ATTENTION, kv_attention)
    AttentionMaskInterface.register(KV_ATTENTION, sdpa_mask)


def install_transforms(model: nn.Module, spec: ArchSpec, rotated: bool, act_bits: int | None,
                       act_clip: float = 0.9, kv_bits: int | None = None,
                       online_block: int | None = None) -> OnlineTransforms:
    """Register the pre-hooks on every block of ``model`` (in place), and the KV attention when ``kv_bits``;
    return the settings object the hooks read. ``online_block``: None for the full H_n on down_proj's input, B
    for the block-diagonal I kron S_B / sqrt(B)."""
    t = OnlineTransforms(act_bits, act_clip, kv_bits, qk_hadamard=rotated and bool(kv_bits))
    if kv_bits:
        register_kv_attention()
        for block in model.get_submodule(spec.layers):
            block.get_submodule(spec.attn).tbq_kv = t
        model.set_attn_implementation(KV_ATTENTION)

    def hadamard_hook(_module, args):
        return (apply_online_rotation(args[0], online_block),) + args[1:]

    def act_hook(_module, args):
        if not t.act_quant_on:
            return None
        return (quantize_activations(args[0], t.act_bits, t.act_clip),) + args[1:]

    for block in model.get_submodule(spec.layers):
        if rotated:
            block.get_submodule(spec.down).register_forward_pre_hook(hadamard_hook)
        if act_bits:
            for path in spec.linears().values():
                block.get_submodule(path).register_forward_pre_hook(act_hook)
    return t


def install_configured(model: nn.Module, spec: ArchSpec, transform) -> OnlineTransforms:
    """:func:`install_transforms` as a run's ``TransformConfig`` asks."""
    return install_transforms(model, spec, transform.rotate == "hadamard", transform.act_bits, transform.act_clip,
                              transform.kv_bits, transform.online_block)
