"""Triton kernel of :mod:`tbq_kernels.hadamard_mix`: out[t] = B y[t] for y [T, m, p], B [m, m]."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def mix_kernel(y_ptr, b_ptr, out_ptr, m, p, stride_yt, stride_ym, stride_yp, stride_bm,
               BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """Program (t, j, i): out[t, i-rows, j-cols] = sum over row blocks l of B[i-rows, l] @ y[t, l, j-cols]; rows
    past m masked to zero, float32 accumulation."""
    t, j, i = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = i * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = j * BLOCK_P + tl.arange(0, BLOCK_P)
    r_mask, c_mask = rows < m, cols < p
    acc = tl.zeros([BLOCK_R, BLOCK_P], dtype=tl.float32)
    for l0 in range(0, m, BLOCK_R):
        inner = l0 + tl.arange(0, BLOCK_R)
        l_mask = inner < m
        b = tl.load(b_ptr + rows[:, None] * stride_bm + inner[None, :], mask=r_mask[:, None] & l_mask[None, :],
                    other=0.0)
        y = tl.load(y_ptr + t * stride_yt + inner[:, None] * stride_ym + cols[None, :] * stride_yp,
                    mask=l_mask[:, None] & c_mask[None, :], other=0.0)
        acc = tl.dot(b, y, acc)
    out = out_ptr + t * m * p + rows[:, None] * p + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=r_mask[:, None] & c_mask[None, :])
