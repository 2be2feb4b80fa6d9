"""GPTQ (Frantar et al. 2022) with lazy column blocks, act-order and groups, and the GPTAQ column rule
for propagated-error correction (algorithm.md section 2).

Everything here is a pure function of tensors; the column loop works in the act-order permutation and
``gptq_quantize`` maps the result back to the original column order.
"""

from __future__ import annotations

import torch

from .grid import GridSpec, diagonal_blocks, find_params, find_params_2d, quantize
from .quantized import QuantizedWeight, contiguous_g_idx

LAZY_BLOCK = 128
MAX_DAMP_TRIES = 10


def remove_dead_columns(
    w: torch.Tensor, h: torch.Tensor, r: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Columns never seen by the calibration data (H_ii = 0): W[:, i] = 0, R[:, i] = 0, H_ii = 1.
    Leading batch dims ([..., rows, cols] with [..., cols, cols]) are kept."""
    dead = torch.diagonal(h, dim1=-2, dim2=-1) == 0
    h = h + torch.diag_embed(dead.to(h.dtype))
    keep = (~dead).unsqueeze(-2)
    w = torch.where(keep, w, torch.zeros_like(w))
    if r is not None:
        r = torch.where(keep, r, torch.zeros_like(r))
    return w, h, r


def damp(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """H + percdamp * mean(diag H) * I (for a batch of matrices, each its own mean)."""
    mean = torch.diagonal(h, dim1=-2, dim2=-1).mean(-1)[..., None, None]
    return h + percdamp * mean * torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)


def inverse_cholesky_upper(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """U with H^-1 = U^T U (upper Cholesky of the inverse), damping H again until Cholesky succeeds.
    Works on a batch [..., n, n] too."""
    for _ in range(MAX_DAMP_TRIES):
        h = damp(h, percdamp)
        lower, info = torch.linalg.cholesky_ex(h)
        if not bool(info.any()):
            hinv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if not bool(info.any()):
                return upper
    raise ValueError("the Hessian is not positive definite even after damping; raise --damp or add calibration data")


def gptaq_p(r: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """GPTAQ's correction matrix P = triu(R U^T, 1) U."""
    return torch.triu(r @ u.transpose(-1, -2), diagonal=1) @ u


def lazy_block_size(group_size: int) -> int:
    """Lazy blocks start on group boundaries, so each group's grid sees fully updated columns."""
    if group_size == -1:
        return LAZY_BLOCK
    return group_size * max(1, LAZY_BLOCK // group_size)


def column_pass(
    w: torch.Tensor,
    u: torch.Tensor,
    spec: GridSpec,
    group_size: int,
    h: torch.Tensor | None = None,
    params: tuple[torch.Tensor, torch.Tensor] | None = None,
    p: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize the columns of ``w`` in order, pushing each column's error into the later ones.

    Per column c: q = Q(W[:, c]); e = (W[:, c] - q) / U_cc; W[:, c:] -= e U[c, c:] - w P[c, c:]
    (``p`` is GPTAQ's P, None for plain GPTQ). ``params`` fixes the grid ([rows, groups] scales and zeros);
    otherwise per-channel grids come from ``w`` up front and group grids from the updated columns when the
    loop reaches the group. ``h`` is needed by the hessian search. Returns codes, scales, zeros.
    """
    w = w.clone()
    *batch, rows, cols = w.shape
    gs = cols if group_size == -1 else group_size
    maxq = spec.maxq
    if params is None:
        scale = torch.zeros(*batch, rows, cols // gs, dtype=w.dtype, device=w.device)
        zero = torch.zeros_like(scale)
    else:
        scale, zero = (t.clone() for t in params)
    codes = torch.zeros_like(w)
    step = lazy_block_size(group_size)
    for i1 in range(0, cols, step):
        i2 = min(i1 + step, cols)
        w1 = w[..., i1:i2].clone()
        err1 = torch.zeros_like(w1)
        cols1 = torch.zeros_like(w1)
        u1 = u[..., i1:i2, i1:i2]
        p1 = p[..., i1:i2, i1:i2] if p is not None else None
        for i in range(i2 - i1):
            c = i1 + i
            g = c // gs
            if params is None and c % gs == 0:
                hb = h[..., c : c + gs, c : c + gs].unsqueeze(-3) if spec.search == "hessian" else None
                s, z = find_params(w1[..., i : i + gs].unsqueeze(-2), spec, hb)
                scale[..., g], zero[..., g] = s[..., 0], z[..., 0]
            col = w1[..., i]
            q = quantize(col, scale[..., g], zero[..., g], maxq)
            codes[..., c] = q
            e = (col - scale[..., g] * (q - zero[..., g])) / u1[..., i, i].unsqueeze(-1)
            update = e.unsqueeze(-1) * u1[..., i, i:].unsqueeze(-2)
            if p1 is not None:
                update = update - col.unsqueeze(-1) * p1[..., i, i:].unsqueeze(-2)
            cols1[..., i] = col
            w1[..., i:] -= update
            err1[..., i] = e
        tail = err1 @ u[..., i1:i2, i2:]
        if p is not None:
            tail = tail - cols1 @ p[..., i1:i2, i2:]
        w[..., i2:] -= tail
    return codes, scale, zero


def act_order_permutation(h: torch.Tensor) -> torch.Tensor:
    """Columns by decreasing diag(H) (averaged over leading batch dims)."""
    d = torch.diagonal(h, dim1=-2, dim2=-1)
    return torch.argsort(d.reshape(-1, d.shape[-1]).mean(0), descending=True, stable=True)


def prepare_columns(w, h, r=None, act_order=False):
    """Dead-column fix-up and (optional) act-order permutation of W's columns, H and R -> (w, h, r, perm)."""
    w, h, r = remove_dead_columns(w, h, r)
    perm = act_order_permutation(h) if act_order else torch.arange(h.shape[-1], device=h.device)
    w, h = w[..., perm], h[..., perm, :][..., perm]
    r = r[..., perm, :][..., perm] if r is not None else None
    return w, h, r, perm


def unpermute(codes: torch.Tensor, perm: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes back in the original column order, and each original column's group index."""
    inv = torch.argsort(perm)
    return codes[..., inv], contiguous_g_idx(codes.shape[-1], group_size, codes.device)[inv]


def gptq_quantize(
    w: torch.Tensor,
    h: torch.Tensor,
    spec: GridSpec,
    group_size: int = -1,
    percdamp: float = 0.01,
    act_order: bool = False,
    r: torch.Tensor | None = None,
) -> QuantizedWeight:
    """GPTQ on one [out, in] weight with Hessian H_in (or a batch [b, out, in] with [b, in, in]); ``r`` (already
    scaled by alpha) turns on GPTAQ."""
    w, h, r, perm = prepare_columns(w, h, r, act_order)
    u = inverse_cholesky_upper(h, percdamp)
    p = gptaq_p(r, u) if r is not None else None
    h_grid = damp(h, percdamp) if spec.search == "hessian" else None
    params = find_params_2d(w, spec, -1, h_grid) if group_size == -1 else None
    codes, scale, zero = column_pass(w, u, spec, group_size, h_grid, params, p)
    codes, g_idx = unpermute(codes, perm, group_size)
    return QuantizedWeight(codes, scale, zero, g_idx)
