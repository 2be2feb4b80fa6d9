"""Triton dequant-GEMM kernels over the exported layout (see layout.py): a GEMV for a few rows, a tiled
tl.dot GEMM otherwise; both split K across programs for small M (float32 atomics) to fill the GPU.

A K-tile never crosses a group (BLOCK_K divides the group size), so one scale and zero serve a whole tile row.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _codes(w_ptr, z_ptr, offs_n, n_mask, k0, g, stride_wn, stride_zn,
           BITS: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """u - z for columns k0 .. k0 + BLOCK_K of rows offs_n: float32 [BLOCK_N, BLOCK_K].

    No integer-to-float conversion (a quarter-rate instruction, the GEMV's bottleneck): the code's bits are OR-ed
    into the mantissa of 2^23, whose float32 value is then exactly 2^23 + u.
    """
    PACK: tl.constexpr = 32 // BITS
    offs_w = k0 // PACK + tl.arange(0, BLOCK_K // PACK)
    words = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_w[None, :], mask=n_mask[:, None], other=0)
    shifts = tl.arange(0, PACK) * BITS
    u = (words[:, :, None] >> shifts[None, None, :]) & ((1 << BITS) - 1)  # value i of word j is column j*PACK + i
    u = (tl.reshape(u, (BLOCK_N, BLOCK_K)) | 0x4B000000).to(tl.float32, bitcast=True)  # 2^23 + u
    if HAS_ZERO:
        z = tl.load(z_ptr + offs_n * stride_zn + g, mask=n_mask, other=0.0).to(tl.float32)
        return u - (8388608.0 + z)[:, None]
    else:
        return u - (8388608.0 + (1 << (BITS - 1)))


@triton.jit
def _tile(w_ptr, s_ptr, z_ptr, offs_n, n_mask, k0, group_size, stride_wn, stride_sn, stride_zn,
          BITS: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(u - z [BLOCK_N, BLOCK_K], s [BLOCK_N]) of the K-tile at k0: codes and their group's scale, float32."""
    g = k0 // group_size
    c = _codes(w_ptr, z_ptr, offs_n, n_mask, k0, g, stride_wn, stride_zn, BITS, HAS_ZERO, BLOCK_N, BLOCK_K)
    s = tl.load(s_ptr + offs_n * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)
    return c, s


@triton.jit
def gemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, N, K, group_size, k_len,
                stride_xm, stride_wn, stride_sn, stride_zn, stride_ym,
                BITS: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                ATOMIC: tl.constexpr):
    """y[m, n] (+)= sum_k x[m, k] (u[n, k] - z) s[n, g(k)] over one split of k_len columns;
    grid (N / BLOCK_N, K / k_len, M); ATOMIC: several splits add into a float32 y."""
    pid_n, pid_k, m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for step in range(0, k_len // BLOCK_K):
        k0 = pid_k * k_len + step * BLOCK_K
        x = tl.load(x_ptr + m * stride_xm + k0 + tl.arange(0, BLOCK_K)).to(tl.float32)
        c, s = _tile(w_ptr, s_ptr, z_ptr, offs_n, n_mask, k0, group_size, stride_wn, stride_sn, stride_zn,
                     BITS, HAS_ZERO, BLOCK_N, BLOCK_K)
        acc += s * tl.sum(c * x[None, :], axis=1)  # s_n sum_k (u - z) x
    out = y_ptr + m * stride_ym + offs_n
    if ATOMIC:
        tl.atomic_add(out, acc, mask=n_mask)
    else:
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def gemm_kernel(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, M, N, K, group_size, k_len,
                stride_xm, stride_wn, stride_sn, stride_zn, stride_ym,
                BITS: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, ATOMIC: tl.constexpr):
    """y = x W^T with W dequantized tile by tile into x's dtype; grid (M / BLOCK_M * N / BLOCK_N, K / k_len)."""
    pid, pid_k = tl.program_id(0), tl.program_id(1)
    blocks_n = tl.cdiv(N, BLOCK_N)
    offs_m = (pid // blocks_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid % blocks_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = offs_m < M, offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for step in range(0, k_len // BLOCK_K):
        k0 = pid_k * k_len + step * BLOCK_K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + tl.arange(0, BLOCK_K))[None, :],
                    mask=m_mask[:, None], other=0.0)
        c, s = _tile(w_ptr, s_ptr, z_ptr, offs_n, n_mask, k0, group_size, stride_wn, stride_sn, stride_zn,
                     BITS, HAS_ZERO, BLOCK_N, BLOCK_K)
        w = (c * s[:, None]).to(x.dtype)
        acc = tl.dot(x, tl.trans(w), acc)
    out = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if ATOMIC:
        tl.atomic_add(out, acc, mask=mask)
    else:
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask)
