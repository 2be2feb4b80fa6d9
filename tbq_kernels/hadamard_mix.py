"""The order-m part of the full online Hadamard H_n = (H_m kron S_p) / sqrt(n): per token, X [m, p] -> B X with
B = H_m^T / sqrt(m) [m, m], in one Triton launch on CUDA (torch.matmul elsewhere).

torch.matmul of [m, m] x [T, m, p] runs as a transposed [T p, m] x [m, m] GEMM with two copies of the activations
around it; this kernel reads and writes each activation once: program (t, j) loads X_t[:, j-tile] (rows padded to a
power of two, at most 64 at a time) and B's matching block, and multiplies them on the tensor cores with float32
accumulation.
"""

from __future__ import annotations

import torch


def hadamard_mix_ref(y: torch.Tensor, base_t: torch.Tensor) -> torch.Tensor:
    """B Y per token in float64: y [T, m, p], base_t [m, m] -> float64 [T, m, p]."""
    return torch.matmul(base_t.cpu().double(), y.cpu().double())


def check_mix_inputs(y: torch.Tensor, base_t: torch.Tensor) -> None:
    """One-line ValueErrors for operands :func:`hadamard_mix` cannot take."""
    if y.dim() != 3 or base_t.dim() != 2 or base_t.shape != (y.shape[1], y.shape[1]):
        raise ValueError(f"need y [T, m, p] and base [m, m], got {list(y.shape)} and {list(base_t.shape)}")
    if not base_t.is_contiguous():
        raise ValueError("base must be contiguous")
    if y.dtype != base_t.dtype or y.device != base_t.device:
        raise ValueError(f"y and base must share dtype and device, got {y.dtype}/{y.device} and "
                         f"{base_t.dtype}/{base_t.device}")


def hadamard_mix(y: torch.Tensor, base_t: torch.Tensor) -> torch.Tensor:
    """B Y per token: y [T, m, p] (float16/bfloat16 on CUDA: Triton; else torch.matmul), base_t [m, m] in y's dtype
    -> [T, m, p] contiguous, y's dtype; float32 accumulation and one rounding to y's dtype on every path."""
    check_mix_inputs(y, base_t)
    if not y.is_cuda or y.dtype not in (torch.float16, torch.bfloat16):  # float32 accumulation, as the kernel
        acc = torch.promote_types(y.dtype, torch.float32)
        return torch.matmul(base_t.to(acc), y.to(acc)).to(y.dtype)
    import triton

    from .triton_hadamard_mix import mix_kernel

    t, m, p = y.shape
    out = torch.empty(t, m, p, device=y.device, dtype=y.dtype)
    block_r = min(64, max(16, triton.next_power_of_2(m)))
    block_p = min(128, max(16, triton.next_power_of_2(p)))
    if t:
        grid = (t, triton.cdiv(p, block_p), triton.cdiv(m, block_r))
        mix_kernel[grid](y, base_t, out, m, p, y.stride(0), y.stride(1), y.stride(2), base_t.stride(0),
                         BLOCK_R=block_r, BLOCK_P=block_p, num_warps=4)
    return out


@torch.library.custom_op("tbq::hadamard_mix", mutates_args=(), schema="(Tensor y, Tensor base_t) -> Tensor")
def hadamard_mix_op(y, base_t):
    """:func:`hadamard_mix` as an opaque torch op, so torch.compile (vLLM) traces around the Triton launch."""
    return hadamard_mix(y, base_t)


@hadamard_mix_op.register_fake
def _(y, base_t):
    return torch.empty_like(y, memory_format=torch.contiguous_format)
