"""W4A4 and W4A8 linears: dynamic per-token symmetric integer activations times tbq's symmetric int4 weights.

Hopper has no int4 tensor cores, but int4 weights and int4-grid (or int8) activation codes are exact int8 operands,
and an int8 MMA with int32 accumulation computes their product bit for bit:

    y[m, n] = s_x[m] * sum_g s_w[n, g] * sum_{k in g} q_x[m, k] * q_w[n, k]

with q_x = clamp(round(x / s_x), -2^(b-1), 2^(b-1) - 1), s_x = clip * max_k |x[m, k]| / (2^(b-1) - 1) (the run's
fake quantization, ``turboboa_export.rotation.online.quantize_activations``) and q_w = u - 8 the exported codes.

- :func:`quantize_act`: the activation codes and scales in plain torch (float32), which vLLM's torch.compile fuses
  with the RMSNorm before the layer (alone, compiled, it runs 4x slower than vLLM's int8 quantization on an H200,
  results/int-act-h200-s9; a Triton pass of its own was 2x slower and would stop that fusion); the fake-quantized
  s_x q_x is ``quantize_activations``;
- ``hadamard_quant``: the same codes after the online Hadamard of down_proj's input, in one CUDA pass;
- :func:`int8_weight` + :func:`int_linear_cutlass` (CUDA, channel-wise weights): the codes unpacked once to int8
  and vLLM's CUTLASS int8 scaled-mm with per-token x per-channel scales: exact integer sums on the int8 tensor cores;
- grouped weights on CUDA: vLLM's own W4A16 kernel on the fake-quantized s_x q_x (exact up to its fp16 rounding;
  wired in ``turboboa_export.vllm_int_scheme``);
- :func:`int_gemm` (``torch.ops.tbq.int_gemm``): the same sums in float64 matmuls on any device (exact: every
  partial sum is an integer below 2^53), so vLLM's CPU build serves W4A4 too.
A fused kernel reading the packed int4 weights (Triton, int8 tl.dot) measured 2-5x slower than CUTLASS and cuBLAS
(results/int-act-h200/triton_int_gemm_shapes.txt) and was removed. References in :mod:`tbq_kernels.reference`.
"""

from __future__ import annotations

import torch

from turboboa_export.rotation.online import activation_codes

from .layout import DequantWeight

ACT_BITS = (4, 8)


def act_qmax(bits: int) -> int:
    """The largest positive code of a b-bit symmetric activation, 2^(b-1) - 1; ValueError for other widths."""
    if bits not in ACT_BITS:
        raise ValueError(f"activations must be quantized to one of {ACT_BITS} bits, got {bits}")
    return 2 ** (bits - 1) - 1


def quantize_act(x: torch.Tensor, bits: int, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token codes of x [M, K] (float16/bfloat16/float32) for the integer GEMMs: (q int8 [M, K], s_x float32
    [M, 1]) of ``rotation.online.activation_codes`` (computed in float32)."""
    act_qmax(bits)
    q, s = activation_codes(x.float(), bits, clip)
    return q.to(torch.int8), s


def check_int_gemm_inputs(q: torch.Tensor, s_x: torch.Tensor, w: DequantWeight) -> None:
    """One-line ValueErrors for operands :func:`int_gemm` cannot take."""
    if w.bits != 4 or w.zero is not None:
        raise ValueError(f"integer-activation GEMMs take symmetric int4 weights, got {w.bits}-bit"
                         f"{' asymmetric' if w.zero is not None else ''}; quantize with --bits 4 --sym")
    if q.dtype != torch.int8 or q.dim() != 2 or q.shape[1] != w.in_features:
        raise ValueError(f"activation codes must be int8 [M, {w.in_features}], got {q.dtype} {list(q.shape)}")
    if s_x.dtype != torch.float32 or tuple(s_x.shape) != (q.shape[0], 1):
        raise ValueError(f"activation scales must be float32 [{q.shape[0]}, 1], got {s_x.dtype} {list(s_x.shape)}")
    if not (q.device == s_x.device == w.packed.device == w.scale.device):
        raise ValueError("activation codes, scales and the weight must be on one device")


def int_gemm(q: torch.Tensor, s_x: torch.Tensor, w: DequantWeight, out_dtype: torch.dtype) -> torch.Tensor:
    """y = s_x * sum_g s_w[:, g] * (q_g @ q_w,g^T) -> [M, N] in ``out_dtype``; q int8 [M, K], s_x float32 [M, 1],
    ``w`` symmetric int4 (scales [N, groups]); float64 integer sums on any device; one-line ValueErrors."""
    check_int_gemm_inputs(q, s_x, w)
    return int_gemm_torch(q, s_x, w).to(out_dtype)


def int8_weight(w: DequantWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-wise symmetric int4 ``w`` as CUTLASS operands: (codes int8 [K, N] column-major, scales float32 [N, 1])."""
    from turboboa_export.export.pack import unpack_rows

    if w.group_size != w.in_features or w.bits != 4 or w.zero is not None:
        raise ValueError("int8_weight takes channel-wise symmetric int4 weights")
    codes = (unpack_rows(w.packed, 4, w.in_features) - 8).to(torch.int8)  # [N, K]
    return codes.t(), w.scale.float().reshape(-1, 1).contiguous()  # [K, N] with stride (1, K): column-major


def int_linear_cutlass(q: torch.Tensor, s_x: torch.Tensor, w8: torch.Tensor, s_w: torch.Tensor,
                       out_dtype: torch.dtype, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = s_x[m] s_w[n] sum_k q[m, k] q_w[n, k] (+ bias) -> [M, N] in ``out_dtype`` (float16/bfloat16) by vLLM's
    CUTLASS int8 scaled-mm (CUDA): q int8 [M, K] and s_x float32 [M, 1] (:func:`quantize_act` or
    ``hadamard_quant``), w8 and s_w from :func:`int8_weight`."""
    import vllm._custom_ops as ops

    return ops.cutlass_scaled_mm(q, w8, s_x, s_w, out_dtype, bias)


def int_gemm_torch(q: torch.Tensor, s_x: torch.Tensor, w: DequantWeight) -> torch.Tensor:
    """The same sums as the kernel in float64 matmuls, group by group (exact integers), scaled -> float32 [M, N]."""
    from turboboa_export.export.pack import unpack_rows

    q_w = (unpack_rows(w.packed, 4, w.in_features) - 8).double()  # [N, K]
    g = w.group_size
    parts = torch.stack([q[:, i:i + g].double() @ q_w[:, i:i + g].T for i in range(0, w.in_features, g)])  # [G, M, N]
    return ((parts.float() * w.scale.float().T[:, None, :]).sum(0) * s_x)


@torch.library.custom_op("tbq::int_gemm", mutates_args=(),
                         schema="(Tensor q, Tensor s_x, Tensor packed, Tensor scale, int group_size, "
                                "ScalarType out_dtype) -> Tensor")
def int_gemm_op(q, s_x, packed, scale, group_size, out_dtype):
    """:func:`int_gemm` as an opaque torch op, so torch.compile (vLLM) traces around it."""
    return int_gemm(q, s_x, DequantWeight(packed, scale, None, 4, group_size, q.shape[-1]), out_dtype)


@int_gemm_op.register_fake
def _(q, s_x, packed, scale, group_size, out_dtype):
    return q.new_empty(q.shape[0], packed.shape[0], dtype=out_dtype)
