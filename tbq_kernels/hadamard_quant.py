"""The online Hadamard of a W4A4/W4A8 layer's input fused with the per-token quantization of its output: x [T, n]
(float16/bfloat16) -> int8 codes q [T, n] and float32 scales s_x [T, 1] of y = x H, read once and written once as
codes (the two-pass transform, ``tbq::hadamard_mix`` then Hadacore, wrote y in x's dtype and read it back twice).

H is the full online Hadamard H_n = (H_m kron S_p) / sqrt(n) of ``turboboa_export.rotation.hadamard`` (``base_t`` =
H_m^T / sqrt(m)) or the block-diagonal I_{n/B} kron S_B / sqrt(B) (``base_t`` None, p = B); the codes are those of
``turboboa_export.rotation.online.activation_codes``: s_x = clip max_k |y_k| / (2^(b-1) - 1), q = clamp(round(y / s_x),
-2^(b-1), 2^(b-1) - 1). One Triton program per token holds the token's row as [m, P1, P2] (p = P1 P2) and applies
S_P2, S_P1 and H_m as three tensor-core products.
"""

from __future__ import annotations

import math

import torch

from turboboa_export.rotation.hadamard import sylvester_transform
from turboboa_export.rotation.online import activation_codes

from .int_act import act_qmax

MAX_ROW = 32768  # padded elements one program holds (registers and shared memory); wider rows take the two passes
MIN_FACTOR = 16  # tensor-core products need every dimension >= 16


def split_sylvester(p: int) -> tuple[int, int] | None:
    """(P1, P2) with S_p = S_P1 kron S_P2 as the kernel applies it: (1, p) for 16 <= p <= 128, else two powers of
    two >= 16 (P2 the larger); None where p is not a power of two >= 16."""
    if p < MIN_FACTOR or p & (p - 1):
        return None
    if p <= 128:
        return 1, p
    k = p.bit_length() - 1
    return 2 ** (k // 2), 2 ** (k - k // 2)


def kernel_plan(n: int, base_t: torch.Tensor | None, p: int) -> tuple[int, int, int, int] | None:
    """(m, rows, P1, P2) the fused kernel runs for an n-wide input, or None where it cannot (the caller takes the
    float32 torch path): p must split (:func:`split_sylvester`); the m = n / p rows are padded to a power of two
    ``rows`` (at least 16 when mixed by ``base_t``), with rows * P1 >= 16 and rows * p <= :data:`MAX_ROW`.
    ValueError when ``base_t`` is not [m, m]."""
    split = split_sylvester(p)
    if split is None or n % p:
        return None
    m = n // p
    if base_t is not None and tuple(base_t.shape) != (m, m):
        raise ValueError(f"base must be [{m}, {m}] for n={n}, p={p}, got {list(base_t.shape)}")
    rows = 1 << (m - 1).bit_length()
    if base_t is not None:
        rows = max(MIN_FACTOR, rows)
    if rows * p > MAX_ROW or rows * split[0] < MIN_FACTOR:
        return None
    return m, rows, *split


def transform_torch(x: torch.Tensor, base_t: torch.Tensor | None, p: int) -> torch.Tensor:
    """y = x H in float32 by butterflies and one [m, m] product (any device): the CPU path of :func:`hadamard_quant`."""
    y = sylvester_transform(x.float().reshape(x.shape[0], -1, p))
    if base_t is not None:
        y = torch.matmul(base_t, y)
    return y.reshape(x.shape)


def hadamard_quant(x: torch.Tensor, base_t: torch.Tensor | None, p: int, bits: int,
                   clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and scales of y = x H per token: x [T, n] float16/bfloat16/float32, ``base_t`` H_m^T / sqrt(m) [m, m]
    float32 on x's device (n = m p; None: block-diagonal Sylvester blocks of p), ``bits`` 4 or 8, ``clip`` in (0, 1] -> (q int8 [T, n],
    s_x float32 [T, 1]). The Triton kernel on CUDA for fp16/bf16 where :func:`kernel_plan` allows, float32 torch
    elsewhere. ValueError for a bad width, dtype or shape."""
    qmax = act_qmax(bits)
    if x.dim() != 2 or x.shape[1] % p:
        raise ValueError(f"x must be [T, n] with n a multiple of p={p}, got {list(x.shape)}")
    if base_t is not None and (base_t.dtype != torch.float32 or base_t.device != x.device):
        raise ValueError(f"base must be float32 on {x.device}, got {base_t.dtype} on {base_t.device}")
    plan = kernel_plan(x.shape[1], base_t, p) if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) else None
    if plan is None:
        q, s = activation_codes(transform_torch(x, base_t, p), bits, clip)
        return q.to(torch.int8), s
    from .triton_hadamard_quant import hadamard_quant_kernel

    m, rows, p1, p2 = plan
    t, n = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    q = torch.empty(t, n, dtype=torch.int8, device=x.device)
    s = torch.empty(t, 1, dtype=torch.float32, device=x.device)
    b = base_t.contiguous() if base_t is not None else s  # s: an unread placeholder when not mixing
    if t:
        hadamard_quant_kernel[(t,)](x, b, q, s, m, x.stride(0), 1 / math.sqrt(p), float(clip), float(qmax),
                                    MP=rows, P1=p1, LOG_P1=p1.bit_length() - 1, P2=p2, LOG_P2=p2.bit_length() - 1,
                                    MIX=base_t is not None, num_warps=8 if rows * p > 4096 else 4)
    return q, s


@torch.library.custom_op("tbq::hadamard_quant", mutates_args=(),
                         schema="(Tensor x, Tensor? base_t, int p, int bits, float clip) -> (Tensor, Tensor)")
def hadamard_quant_op(x, base_t, p, bits, clip):
    """:func:`hadamard_quant` as an opaque torch op, so torch.compile (vLLM) traces around the Triton launch."""
    return hadamard_quant(x, base_t, p, bits, clip)


@hadamard_quant_op.register_fake
def _(x, base_t, p, bits, clip):
    return (torch.empty(x.shape, dtype=torch.int8, device=x.device),
            torch.empty(x.shape[0], 1, dtype=torch.float32, device=x.device))
