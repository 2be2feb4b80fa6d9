"""TurboBoA as algorithm.md section 4 states it: slow, obvious, float64, one column and one coordinate at a time.

Test-only and independent of ``turboboa_export`` (torch and ``reference_grid`` only). Choices the spec leaves open
follow the library and are stated here: H_out is damped (by its own fraction) before its Cholesky factor; the
hessian grid search scores with the damped H_in; the refinement uses the undamped H_in and H_out; a grouped grid is found
when the column pass reaches the group, from the group's columns as updated so far.
"""

from __future__ import annotations

import torch

from .reference_grid import grid_ref, quantize_ref


def damped(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """H + percdamp * mean(diag H) * I."""
    return h + percdamp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)


def upper_inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """U upper triangular with H^-1 = U^T U."""
    return torch.linalg.cholesky(torch.linalg.inv(h), upper=True)


def turboboa_ref(w, h_in, h_out, bits, *, sym=False, search="hessian", group_size=-1, r=None, alpha=0.0, n=16,
                 adaptive_grid=True, refine_iters=1, percdamp=0.01, percdamp_out=None):
    """Quantize w [heads, rows, cols] for tr(H_out dW H_in dW^T) - 2 tr(H_out W (alpha R) dW^T) per head.

    h_in [cols, cols]; h_out [heads, rows, rows]; r [cols, cols] (unscaled) or None. Row blocks of ``n`` rows
    (F1); F2 when alpha R is given; F3: grid of each block from its current weights (``adaptive_grid``) and
    ``refine_iters`` coordinate-descent passes over the scales. H_in is damped by ``percdamp`` of its mean diagonal,
    H_out by ``percdamp_out`` (None: ``percdamp``). Returns codes [heads, rows, cols] and scales,
    zeros [heads, rows, groups].
    """
    w, h_in, h_out = w.double().clone(), h_in.double().clone(), h_out.double()
    heads, rows, cols = w.shape
    r = alpha * (r.double().clone() if r is not None else torch.zeros(cols, cols, dtype=torch.float64))
    # dead columns (issue 18: their weights are kept): R[:, i] = 0, H_ii = the mean live diagonal (1 if none)
    dead = torch.diag(h_in) == 0
    h_in[dead, dead] = torch.diag(h_in)[~dead].mean() if (~dead).any() else 1.0
    r[:, dead] = 0
    h = damped(h_in, percdamp)
    u = upper_inverse_cholesky(h)
    p = torch.triu(r @ u.T, 1) @ u  # GPTAQ: P = triu(R U^T, 1) U
    r_hinv = r @ torch.linalg.inv(h)  # R H_in^-1
    damp_out = percdamp if percdamp_out is None else percdamp_out
    u_out = torch.stack([upper_inverse_cholesky(damped(ho, damp_out)) for ho in h_out])
    gs = cols if group_size == -1 else group_size
    maxq = 2**bits - 1
    original = w.clone()
    codes = torch.zeros_like(w)
    scale = torch.zeros(heads, rows, cols // gs, dtype=torch.float64)
    zero = torch.zeros_like(scale)
    for r1 in range(0, rows, n):
        r2 = min(r1 + n, rows)
        wb = w[:, r1:r2].clone()  # W_B before its column pass
        work = wb.clone()
        for c in range(cols):
            g = c // gs
            if c % gs == 0:
                block = (work if adaptive_grid else original[:, r1:r2])[..., c : c + gs]
                scale[:, r1:r2, g], zero[:, r1:r2, g] = grid_ref(block, bits, sym, search, h[c : c + gs, c : c + gs])
            col = work[..., c].clone()
            s, z = scale[:, r1:r2, g], zero[:, r1:r2, g]
            codes[:, r1:r2, c] = quantize_ref(col, s, z, maxq)
            e = (col - s * (codes[:, r1:r2, c] - z)) / u[c, c]
            work[..., c:] -= e.unsqueeze(-1) * u[c, c:] - col.unsqueeze(-1) * p[c, c:]  # GPTAQ column rule
        qb = scale[:, r1:r2].repeat_interleave(gs, -1) * (codes[:, r1:r2] - zero[:, r1:r2].repeat_interleave(gs, -1))
        for hd in range(heads):
            lower = u_out[hd].T
            p2 = lower[r2:, r1:r2] @ torch.linalg.inv(lower[r1:r2, r1:r2])  # P2 = [U^T]_{Rm,B} [U^T]_{B,B}^-1
            w[hd, r2:] -= p2 @ ((wb[hd] - qb[hd]) + wb[hd] @ r_hinv)  # F1 + F2 row pass
    grid_scale = scale.clone()
    for _ in range(refine_iters):
        scale = refine_pass_ref(codes - zero.repeat_interleave(gs, -1), scale, original, h_in, h_out, r, gs, grid_scale)
    return codes, scale, zero


def refine_pass_ref(qbar, scale, w, h_in, h_out, r, gs, grid_scale):
    """One pass over the rows j (and groups g) of each head: with m = Qbar_j on group g and zero elsewhere,
    s_{j,g} += [m H_in (W - Q)^T H_out[:, j] + (H_out W R m^T)_j] / (H_out,jj m H_in m^T), Q = s Qbar, then
    s_{j,g} is put back into [grid_scale / 2, 2 grid_scale] if the step left it."""
    scale = scale.clone()
    heads, rows, groups = scale.shape
    for hd in range(heads):
        for j in range(rows):
            for g in range(groups):
                m = torch.zeros_like(qbar[hd, j])
                m[g * gs : (g + 1) * gs] = qbar[hd, j, g * gs : (g + 1) * gs]
                q = scale[hd].repeat_interleave(gs, -1) * qbar[hd]
                num = m @ h_in @ (w[hd] - q).T @ h_out[hd][:, j] + (h_out[hd] @ w[hd] @ r @ m)[j]
                den = h_out[hd][j, j] * (m @ h_in @ m)
                if den > 0:
                    s0 = float(grid_scale[hd, j, g])
                    scale[hd, j, g] = min(max(float(scale[hd, j, g] + num / den), s0 / 2), 2 * s0)
    return scale


def one_sided_ref(w, h_in, bits, **kw):
    """GPTQ with F2 and F3 on an [out, in] weight: the two-sided algorithm with one head, H_out = I and one row
    block (no row pass)."""
    rows = w.shape[0]
    eye = torch.eye(rows, dtype=torch.float64).unsqueeze(0)
    codes, scale, zero = turboboa_ref(w.unsqueeze(0), h_in, eye, bits, n=rows, **kw)
    return codes[0], scale[0], zero[0]
