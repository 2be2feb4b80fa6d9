"""Triton kernel of :mod:`tbq_kernels.hadamard_quant`: per token, the full online Hadamard and the per-token
symmetric integer codes of its output, in one pass over the activation."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sylvester_tile(P: tl.constexpr, LOG_P: tl.constexpr):
    """The ±1 Sylvester matrix S_P [P, P] float32: S[i, j] = (-1)^popcount(i & j)."""
    both = tl.arange(0, P)[:, None] & tl.arange(0, P)[None, :]
    parity = both & 1
    for k in tl.static_range(1, LOG_P):
        parity = parity ^ ((both >> k) & 1)
    return 1.0 - 2.0 * parity.to(tl.float32)


@triton.jit
def round_half_even(v):
    """torch.round of float32 v (|v| < 2^22): the nearest integer, ties to even."""
    f = tl.floor(v)
    d = v - f
    odd = (f - 2.0 * tl.floor(0.5 * f)) == 1.0
    return tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)


@triton.jit
def hadamard_quant_kernel(x_ptr, b_ptr, q_ptr, s_ptr, m, stride_xt, norm, clip, qmax,
                          MP: tl.constexpr, P1: tl.constexpr, LOG_P1: tl.constexpr, P2: tl.constexpr,
                          LOG_P2: tl.constexpr, MIX: tl.constexpr):
    """Program t: x[t] viewed as X [m, P1, P2] (rows padded to MP with zeros) -> Y = B X (S_P1 kron S_P2) * norm, then
    s = clip max|Y| / qmax (1 for an all-zero token), q = clamp(round(Y / s), -qmax - 1, qmax) as int8; float32
    throughout (tf32 tensor-core products: the ±1 factors are exact, the activations keep 10 mantissa bits)."""
    t = tl.program_id(0).to(tl.int64)
    r = tl.arange(0, MP)
    a = tl.arange(0, P1)
    c = tl.arange(0, P2)
    row_mask = (r < m)[:, None, None]
    offs = r[:, None, None] * (P1 * P2) + a[None, :, None] * P2 + c[None, None, :]  # [MP, P1, P2], natural order
    y = tl.load(x_ptr + t * stride_xt + offs, mask=row_mask, other=0.0).to(tl.float32)
    y = tl.dot(tl.reshape(y, (MP * P1, P2)), sylvester_tile(P2, LOG_P2), input_precision="tf32")  # over c
    y = tl.permute(tl.reshape(y, (MP, P1, P2)), (0, 2, 1))  # [MP, P2, P1]
    if P1 > 1:
        y = tl.reshape(tl.dot(tl.reshape(y, (MP * P2, P1)), sylvester_tile(P1, LOG_P1), input_precision="tf32"),
                       (MP, P2, P1))  # over a
    if MIX:  # over the rows: B [MP, MP] (zero past m) times Y [MP, P2 P1]
        b = tl.load(b_ptr + r[:, None] * m + r[None, :], mask=(r[:, None] < m) & (r[None, :] < m), other=0.0)
        y = tl.reshape(tl.dot(b.to(tl.float32), tl.reshape(y, (MP, P2 * P1)), input_precision="tf32"), (MP, P2, P1))
    y = y * norm
    s = clip * tl.max(tl.max(tl.max(tl.abs(y), axis=2), axis=1), axis=0) / qmax
    s = tl.where(s > 0.0, s, 1.0)
    q = tl.minimum(tl.maximum(round_half_even(tl.div_rn(y, s)), -qmax - 1.0), qmax)
    out = r[:, None, None] * (P1 * P2) + c[None, :, None] + a[None, None, :] * P2  # [MP, P2, P1] -> natural order
    tl.store(q_ptr + t * (m * P1 * P2) + out, q.to(tl.int8), mask=(r < m)[:, None, None])
    tl.store(s_ptr + t, s)
