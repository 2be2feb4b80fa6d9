"""BoA and TurboBoA (algorithm.md sections 3-4) on weights viewed per head: [heads, head_dim, in].

Two-sided loss per head: tr(H_out dW H_in dW^T) - 2 tr(H_out W R dW^T).
F1: rows are quantized in blocks B of N (all heads at once) by a column pass, then the remaining rows Rm are
compensated: W_Rm -= P2 ((W_B - Q_B) + W_B R H_in^-1), P2 = [U_out^T]_{Rm,B} ([U_out^T]_{B,B})^-1.
F2: R (scaled by alpha) in the GPTAQ column rule and the row pass. F3: the grid of each row block comes from
its current weights, then the scales are refined by coordinate descent. BoA is N = 1, no R, grid fixed from
the original weights, no refinement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gptq import column_pass, damp, fill_dead, gptaq_p, gptq_quantize, inverse_cholesky_upper, prepare_columns, unpermute
from .grid import GridSpec, dequantize, find_params_2d
from .precision import tf32_matmuls
from .quantized import QuantizedWeight, contiguous_g_idx
from .refine import refine_scales


@dataclass(frozen=True)
class TurboBoAOptions:
    """F1 rows per block, grid per row block (F3), refinement passes (F3), act-orders, the relative damping of H_in
    and of H_out (None: H_in's); ``tf32``: F2's P and R H_in^-1 and F3's products on TF32 tensor cores (for
    statistics from fp16/bf16 activations on a GPU)."""

    rows: int = 16
    adaptive_grid: bool = True
    refine_iters: int = 1
    act_order: bool = False
    row_act_order: bool = False
    percdamp: float = 0.01
    tf32: bool = False
    percdamp_out: float | None = None


def row_compensation(u_out: torch.Tensor, r1: int, r2: int) -> torch.Tensor:
    """P2 = [U_out^T]_{Rm,B} ([U_out^T]_{B,B})^-1 per head, B = [r1, r2), Rm = [r2, rows): [heads, |Rm|, |B|]."""
    lower = u_out.transpose(-1, -2)
    return torch.linalg.solve_triangular(lower[:, r1:r2, r1:r2], lower[:, r2:, r1:r2], upper=False, left=False)


def row_order(h_out: torch.Tensor) -> torch.Tensor:
    """Per head, rows by decreasing diag(H_out): [heads, rows]."""
    return torch.argsort(torch.diagonal(h_out, dim1=-2, dim2=-1), dim=-1, descending=True, stable=True)


def _permute_rows(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, perm.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def turboboa_two_sided(
    w: torch.Tensor,
    h_in: torch.Tensor,
    h_out: torch.Tensor,
    spec: GridSpec,
    group_size: int = -1,
    r: torch.Tensor | None = None,
    opts: TurboBoAOptions = TurboBoAOptions(),
) -> QuantizedWeight:
    """Quantize a [heads, rows, in] weight (q or k) with per-head H_out; ``r`` is alpha R or None.
    Returns codes/scales/zeros with rows flattened to [heads * rows, ...]."""
    heads, rows, cols = w.shape
    flat, h_in, r, perm = prepare_columns(w.reshape(-1, cols), h_in, r, opts.act_order)
    w = flat.reshape(heads, rows, cols)
    h_out = fill_dead(h_out)  # output rows no calibration query/key excites (e.g. a pruned kv head)
    rperm = row_order(h_out) if opts.row_act_order else torch.arange(rows, device=w.device).expand(heads, rows)
    w = _permute_rows(w, rperm)
    h_out = torch.gather(_permute_rows(h_out, rperm), 2, rperm.unsqueeze(1).expand(-1, rows, -1))
    u_in = inverse_cholesky_upper(h_in, opts.percdamp)
    u_out = inverse_cholesky_upper(h_out, opts.percdamp if opts.percdamp_out is None else opts.percdamp_out)
    p = gptaq_p(r, u_in, opts.tf32) if r is not None else None
    with tf32_matmuls(w.device, opts.tf32):
        r_hinv = r @ u_in.T @ u_in if r is not None else None  # R H_in^-1 = R U^T U
    h_grid = damp(h_in, opts.percdamp) if spec.search == "hessian" else None
    fixed = None  # BoA: one grid for all rows, from the original weights
    if not opts.adaptive_grid:
        fixed = [t.reshape(heads, rows, -1) for t in find_params_2d(flat_rows(w), spec, group_size, h_grid)]
    groups = 1 if group_size == -1 else cols // group_size
    codes = torch.zeros_like(w)
    scale = torch.zeros(heads, rows, groups, dtype=w.dtype, device=w.device)
    zero = torch.zeros_like(scale)
    current = w.clone()
    g_idx = contiguous_g_idx(cols, group_size, w.device).long()
    for r1 in range(0, rows, opts.rows):
        r2 = min(r1 + opts.rows, rows)
        wb = current[:, r1:r2, :]
        params = None if fixed is None else tuple(flat_rows(t[:, r1:r2]) for t in fixed)
        if params is None and group_size == -1:
            params = find_params_2d(flat_rows(wb), spec, -1, h_grid)
        c, s, z = column_pass(flat_rows(wb), u_in, spec, group_size, h_grid, params, p)
        c, s, z = (t.reshape(heads, r2 - r1, -1) for t in (c, s, z))
        codes[:, r1:r2], scale[:, r1:r2], zero[:, r1:r2] = c, s, z
        if r2 < rows:
            qb = dequantize(c, s[..., g_idx], z[..., g_idx])
            err = wb - qb
            if r_hinv is not None:
                err = err + wb @ r_hinv
            current[:, r2:] -= row_compensation(u_out, r1, r2) @ err
    if opts.refine_iters:
        with tf32_matmuls(w.device, opts.tf32):
            scale = refine_scales(codes - zero[..., g_idx], scale, g_idx, w, h_in, h_out, r, opts.refine_iters)
    inv = torch.argsort(rperm, dim=-1)
    codes, scale, zero = (_permute_rows(t, inv) for t in (codes, scale, zero))
    codes, g_idx = unpermute(flat_rows(codes), perm, group_size)
    return QuantizedWeight(codes, flat_rows(scale), flat_rows(zero), g_idx)


def turboboa_one_sided(
    w: torch.Tensor,
    h_in: torch.Tensor,
    spec: GridSpec,
    group_size: int = -1,
    r: torch.Tensor | None = None,
    opts: TurboBoAOptions = TurboBoAOptions(),
) -> QuantizedWeight:
    """GPTQ with F2 (GPTAQ column rule, ``r`` = alpha R) and F3 (scale refinement) on an [out, in] weight, or on
    a batch [b, out, in] with one H_in (and R) per entry (v's kv heads; act-order then uses their mean diag).
    A batch comes back with codes [b, out, in] and scales/zeros [b, out, groups]."""
    q = gptq_quantize(w, h_in, spec, group_size, opts.percdamp, opts.act_order, r, opts.tf32)
    if not opts.refine_iters:
        return q
    w, h_in, r, _ = prepare_columns(w, h_in, r, False)  # the codes are back in the original column order
    g = q.g_idx.long()
    qbar = q.codes - q.zero[..., g]
    batched = w.dim() == 3
    w3, h3, qbar3, s3 = (t if batched else t.unsqueeze(0) for t in (w, h_in, qbar, q.scale))
    r3 = None if r is None else (r if batched else r.unsqueeze(0))

    def entry(b: int) -> torch.Tensor:  # H_out = I couples no rows: each row alone, with its entry's H_in (and R)
        return refine_scales(qbar3[b].unsqueeze(1), s3[b].unsqueeze(1), g, w3[b].unsqueeze(1), h3[b], None,
                             None if r3 is None else r3[b], opts.refine_iters)[:, 0]

    with tf32_matmuls(w.device, opts.tf32):
        scale = torch.stack([entry(b) for b in range(len(w3))])
    return QuantizedWeight(q.codes, scale if batched else scale[0], q.zero, q.g_idx)


def flat_rows(x: torch.Tensor) -> torch.Tensor:
    """[heads, rows, k] -> [heads * rows, k]."""
    return x.reshape(-1, x.shape[-1])

