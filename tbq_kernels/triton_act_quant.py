"""Triton kernel of :func:`tbq_kernels.int_act.quantize_act` on CUDA: per-token symmetric integer codes in one pass
(the row read once, int8 codes and a float32 scale written), as torch computes them, bit for bit."""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_hadamard_quant import round_half_even


@triton.jit
def act_quant_kernel(x_ptr, q_ptr, s_ptr, k, stride_xt, clip, qmax, BLOCK: tl.constexpr):
    """Program t: s = clip max|x[t]| / qmax (1 for an all-zero row), q = clamp(round(x[t] / s), -qmax - 1, qmax), in
    float32 with IEEE division and ties to even (torch's order of operations)."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < k
    x = tl.load(x_ptr + t * stride_xt + cols, mask=mask, other=0.0).to(tl.float32)
    s = tl.div_rn(clip * tl.max(tl.abs(x), axis=0), qmax)
    s = tl.where(s > 0.0, s, 1.0)
    q = tl.minimum(tl.maximum(round_half_even(tl.div_rn(x, s)), -qmax - 1.0), qmax)
    tl.store(q_ptr + t * k + cols, q.to(tl.int8), mask=mask)
    tl.store(s_ptr + t, s)
