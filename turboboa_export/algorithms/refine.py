"""TurboBoA F3: coordinate-descent refinement of the scales with the integer codes frozen (Prop. 3.3).

With Qbar = Q_int - z frozen and Q = diag(s) Qbar, each coordinate s_{j,g} (row j, group g; m = the codes of
row j masked to group g) moves to the exact minimiser of
L = tr(H_out dW H_in dW^T) - 2 tr(H_out W R dW^T),  dW = Q - W:
    s_{j,g} += [ (H_out (W - Q) H_in m^T)_j + (H_out W R m^T)_j ] / (H_out,jj  m H_in m^T),
clamped to [s0/2, 2 s0] around the grid's scale s0 (the exact minimiser on that interval, L being a convex
quadratic in s_{j,g}): the frozen codes are only right for a scale near the one they were rounded with, and free
steps on two-sided q/k reached negative scales (113 of Gemma-3-270M's W3 g64 scales; issue 20), while ordinary
steps stay within 0.87-1.16 s0.
One-sided layers are the case H_out = I (each row its own "head" of one row).
"""

from __future__ import annotations

import torch

TRUST = 2.0  # a refined scale stays within [s0 / TRUST, s0 * TRUST] of the grid's


def refine_scales(
    qbar: torch.Tensor,
    scale: torch.Tensor,
    g_idx: torch.Tensor,
    w: torch.Tensor,
    h_in: torch.Tensor,
    h_out: torch.Tensor | None = None,
    r: torch.Tensor | None = None,
    iters: int = 1,
) -> torch.Tensor:
    """Refined scales.

    qbar, w: [heads, rows, in] (frozen codes minus zeros; full-precision weights); scale: [heads, rows, groups];
    g_idx: [in]; h_in: [in, in] or one per head [heads, in, in]; h_out: [heads, rows, rows] or None (one-sided); r: [in, in] already scaled by
    alpha, or None. Returns the new [heads, rows, groups] scales, each within a factor TRUST of its input.
    """
    heads, rows, cols = qbar.shape
    shape = scale.shape
    if h_out is None:  # one-sided: every row is independent
        qbar, scale, w = (t.reshape(heads * rows, 1, t.shape[-1]) for t in (qbar, scale, w))
        h_out = torch.ones(heads * rows, 1, 1, dtype=w.dtype, device=w.device)
    scale = scale.clone()
    lo, hi = scale / TRUST, scale * TRUST  # the grid's scales are positive
    g_idx = g_idx.long()
    groups = scale.shape[-1]
    columns = [torch.nonzero(g_idx == g).flatten() for g in range(groups)]
    q = scale[..., g_idx] * qbar
    f = h_out @ ((w - q) @ h_in)  # H_out (W - Q) H_in
    wr = h_out @ (w @ r) if r is not None else torch.zeros_like(w)  # H_out W R
    n = scale.shape[1]
    for _ in range(iters):
        for j in range(n):
            hjj = h_out[:, j, j]
            for g, cols_g in enumerate(columns):
                m = qbar[:, j, cols_g]  # [heads, gs]
                mh = (m.unsqueeze(-2) @ h_in[..., cols_g, :]).squeeze(-2)  # m H_in, [heads, in]
                den = hjj * (mh[:, cols_g] * m).sum(-1)
                num = ((f[:, j, cols_g] + wr[:, j, cols_g]) * m).sum(-1)
                step = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
                new = torch.clamp(scale[:, j, g] + step, lo[:, j, g], hi[:, j, g])
                delta = new - scale[:, j, g]
                scale[:, j, g] = new
                # Q_j += delta m  =>  F -= H_out[:, :, j] (delta m H_in)
                f -= h_out[:, :, j].unsqueeze(-1) * (delta.unsqueeze(-1) * mh).unsqueeze(1)
    return scale.reshape(shape)
