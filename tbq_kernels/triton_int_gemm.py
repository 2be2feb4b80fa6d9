"""Triton integer-activation GEMM (W4A4, W4A8): int8 activation codes times the exported int4 weights, unpacked in
registers, multiplied on the int8 tensor cores with int32 accumulation.

Weights stay as exported (int32 [N, K/8], value k of row n at bits [(k % 8) * 4, +4) of word k // 8, offset binary),
so decode reads int4 bytes. A K-tile never crosses a group (BLOCK_K divides the group size): per group the int32 dot
is exact, then scaled by s_w[n, g] in float32; channel-wise weights accumulate the whole K in int32.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def int_gemm_kernel(q_ptr, sx_ptr, w_ptr, s_ptr, y_ptr, M, N, group_size, k_len,
                    stride_qm, stride_wn, stride_sn, stride_ym,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    PER_CHANNEL: tl.constexpr, ATOMIC: tl.constexpr):
    """y[m, n] (+)= s_x[m] sum_g s_w[n, g] sum_{k in g} q[m, k] (u[n, k] - 8) over one split of k_len columns;
    grid (M / BLOCK_M * N / BLOCK_N, K / k_len); ATOMIC: several splits add into a float32 y."""
    pid, pid_k = tl.program_id(0), tl.program_id(1)
    blocks_n = tl.cdiv(N, BLOCK_N)
    offs_m = (pid // blocks_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid % blocks_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = offs_m < M, offs_n < N
    shifts = tl.arange(0, 8) * 4
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    iacc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for step in range(0, k_len // BLOCK_K):
        k0 = pid_k * k_len + step * BLOCK_K
        q = tl.load(q_ptr + offs_m[:, None] * stride_qm + (k0 + tl.arange(0, BLOCK_K))[None, :],
                    mask=m_mask[:, None], other=0)
        offs_w = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        words = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_w[None, :], mask=n_mask[:, None], other=0)
        u = (words[:, :, None] >> shifts[None, None, :]) & 15  # value i of word j is column j*8 + i
        w = (tl.reshape(u, (BLOCK_N, BLOCK_K)) - 8).to(tl.int8)
        d = tl.dot(q, tl.trans(w), out_dtype=tl.int32)  # exact: |d| <= BLOCK_K * 128 * 8
        if PER_CHANNEL:
            iacc += d
        else:
            s = tl.load(s_ptr + offs_n * stride_sn + k0 // group_size, mask=n_mask, other=0.0).to(tl.float32)
            acc += d.to(tl.float32) * s[None, :]
    if PER_CHANNEL:
        acc = iacc.to(tl.float32) * tl.load(s_ptr + offs_n * stride_sn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    acc = acc * tl.load(sx_ptr + offs_m, mask=m_mask, other=0.0)[:, None]
    out = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if ATOMIC:
        tl.atomic_add(out, acc, mask=mask)
    else:
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask)
