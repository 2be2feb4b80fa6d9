"""W4A4 and W4A8 linears: dynamic per-token symmetric integer activations times tbq's symmetric int4 weights.

Hopper has no int4 tensor cores, but int4 weights and int4-grid (or int8) activation codes are exact int8 operands,
and an int8 MMA with int32 accumulation computes their product bit for bit:

    y[m, n] = s_x[m] * sum_g s_w[n, g] * sum_{k in g} q_x[m, k] * q_w[n, k]

with q_x = clamp(round(x / s_x), -2^(b-1), 2^(b-1) - 1), s_x = clip * max_k |x[m, k]| / (2^(b-1) - 1) (the run's
fake quantization, ``turboboa_export.rotation.online.quantize_activations``) and q_w = u - 8 the exported codes.

- :func:`quantize_act`: the activation codes and scales in plain torch (float32), which torch.compile fuses into one
  kernel inside vLLM;
- :func:`int_gemm`: checks, launch configuration and the Triton kernel (``triton_int_gemm``) on CUDA; on CPU the same
  sums in float64 matmuls (exact: every partial sum is an integer below 2^53), so vLLM's CPU build can serve W4A4 too;
- ``torch.ops.tbq.int_gemm``: the op vLLM's compiled graph calls; references in :mod:`tbq_kernels.reference`.
"""

from __future__ import annotations

import torch

from .layout import DequantWeight
from .ops import _split_k

ACT_BITS = (4, 8)


def act_qmax(bits: int) -> int:
    """The largest positive code of a b-bit symmetric activation, 2^(b-1) - 1; ValueError for other widths."""
    if bits not in ACT_BITS:
        raise ValueError(f"activations must be quantized to one of {ACT_BITS} bits, got {bits}")
    return 2 ** (bits - 1) - 1


def quantize_act(x: torch.Tensor, bits: int, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token codes of x [M, K] (float16/bfloat16/float32): (q int8 [M, K], s_x float32 [M, 1]);
    s_x = clip max|x| / qmax (1 for an all-zero row), q = clamp(round(x / s_x), -qmax - 1, qmax), in float32."""
    qmax = act_qmax(bits)
    xf = x.float()
    s = clip * xf.abs().amax(-1, keepdim=True) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    return torch.clamp(torch.round(xf / s), -qmax - 1, qmax).to(torch.int8), s


def check_int_gemm_inputs(q: torch.Tensor, s_x: torch.Tensor, w: DequantWeight) -> None:
    """One-line ValueErrors for operands :func:`int_gemm` cannot take."""
    if w.bits != 4 or w.zero is not None:
        raise ValueError(f"integer-activation GEMMs take symmetric int4 weights, got {w.bits}-bit"
                         f"{' asymmetric' if w.zero is not None else ''}; quantize with --bits 4 --sym")
    if q.dtype != torch.int8 or q.dim() != 2 or q.shape[1] != w.in_features:
        raise ValueError(f"activation codes must be int8 [M, {w.in_features}], got {q.dtype} {list(q.shape)}")
    if s_x.dtype != torch.float32 or tuple(s_x.shape) != (q.shape[0], 1):
        raise ValueError(f"activation scales must be float32 [{q.shape[0]}, 1], got {s_x.dtype} {list(s_x.shape)}")
    if w.in_features % 32 or w.group_size % 32:
        raise ValueError(f"K={w.in_features} and the group size {w.group_size} must be multiples of 32 for the "
                         "int8 tensor cores")
    if not (q.device == s_x.device == w.packed.device == w.scale.device):
        raise ValueError("activation codes, scales and the weight must be on one device")


def block_k(w: DequantWeight) -> int:
    """The K-tile: the largest of 128, 64, 32 dividing the group (channel-wise: K)."""
    return next(b for b in (128, 64, 32) if w.group_size % b == 0)


def int_gemm(q: torch.Tensor, s_x: torch.Tensor, w: DequantWeight, out_dtype: torch.dtype) -> torch.Tensor:
    """y = s_x * sum_g s_w[:, g] * (q_g @ q_w,g^T) -> [M, N] in ``out_dtype``; q int8 [M, K], s_x float32 [M, 1],
    ``w`` symmetric int4 (scales [N, groups]). Triton on CUDA, float64 matmuls elsewhere; one-line ValueErrors."""
    check_int_gemm_inputs(q, s_x, w)
    if not q.is_cuda:
        return int_gemm_torch(q, s_x, w).to(out_dtype)
    from . import triton_int_gemm

    m, n, k = q.shape[0], w.out_features, w.in_features
    bk = block_k(w)
    bm, bn, warps, stages = (16, 64, 4, 4) if m <= 16 else (64, 64, 4, 4) if m <= 64 else (128, 128, 8, 3)
    tiles = -(-m // bm) * -(-n // bn)
    split = _split_k(tiles, k, bk)
    atomic = split > 1
    y = (torch.zeros(m, n, device=q.device, dtype=torch.float32) if atomic
         else torch.empty(m, n, device=q.device, dtype=out_dtype))
    triton_int_gemm.int_gemm_kernel[(tiles, split)](
        q, s_x, w.packed, w.scale, y, m, n, w.group_size, k // split,
        q.stride(0), w.packed.stride(0), w.scale.stride(0), y.stride(0),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PER_CHANNEL=w.group_size == k, ATOMIC=atomic,
        num_warps=warps, num_stages=stages)
    return y.to(out_dtype)


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
    """:func:`int_gemm` as an opaque torch op, so torch.compile (vLLM) traces around the Triton launch."""
    return int_gemm(q, s_x, DequantWeight(packed, scale, None, 4, group_size, q.shape[-1]), out_dtype)


@int_gemm_op.register_fake
def _(q, s_x, packed, scale, group_size, out_dtype):
    return q.new_empty(q.shape[0], packed.shape[0], dtype=out_dtype)
