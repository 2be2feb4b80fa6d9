"""Slow, obvious float64 references for the numeric routines (no lazy blocks, explicit loops); their grids come
from the independent ``reference_grid``, not the library's search."""

from __future__ import annotations

import torch

from turboboa_export.algorithms.grid import GridSpec
from turboboa_export.pipeline.rundir import load_fake_quant_model, load_run

from .reference_grid import grid_ref, quantize_ref as quantize


def params_ref(w: torch.Tensor, spec: GridSpec, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row grid of a [rows, cols] block (one group)."""
    return grid_ref(w, spec.bits, spec.sym, spec.search, h)


def gptq_ref(w, h, spec, group_size=-1, percdamp=0.01, act_order=False, r=None):
    """GPTQ/GPTAQ one column at a time with the inverse Hessian from torch.linalg.inv. Returns codes,
    scales, zeros (working order) and the permutation."""
    w, h = w.double().clone(), h.double().clone()
    r = r.double().clone() if r is not None else None
    dead = torch.diag(h) == 0
    h[dead, dead] = torch.diag(h)[~dead].mean() if (~dead).any() else 1.0  # dead inputs keep their weights
    if r is not None:
        r[:, dead] = 0
    cols = w.shape[1]
    perm = torch.argsort(torch.diag(h), descending=True, stable=True) if act_order else torch.arange(cols)
    w, h = w[:, perm], h[perm][:, perm]
    if r is not None:
        r = r[perm][:, perm]
    h = h + percdamp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    p = torch.triu(r @ u.T, 1) @ u if r is not None else torch.zeros_like(h)
    gs = cols if group_size == -1 else group_size
    g_count = cols // gs
    scale = torch.zeros(w.shape[0], g_count, dtype=w.dtype)
    zero = torch.zeros_like(scale)
    codes = torch.zeros_like(w)
    hgrid = h if spec.search == "hessian" else None
    for c in range(cols):
        g = c // gs
        if c % gs == 0:
            block = w[:, c : c + gs] if group_size != -1 else w
            hb = hgrid[c : c + gs, c : c + gs] if hgrid is not None else None
            scale[:, g], zero[:, g] = params_ref(block, spec, hb)
        col = w[:, c].clone()
        q = quantize(col, scale[:, g], zero[:, g], spec.maxq)
        codes[:, c] = q
        e = (col - scale[:, g] * (q - zero[:, g])) / u[c, c]
        w[:, c:] -= torch.outer(e, u[c, c:]) - torch.outer(col, p[c, c:])
    return codes, scale, zero, perm


def random_layer(out: int, cols: int, tokens: int, seed: int, dead: int = 0):
    """A random weight and an H_in = (2/T) X^T X from correlated inputs, ``dead`` columns never active."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, cols, generator=g, dtype=torch.float64)
    mix = torch.randn(cols, cols, generator=g, dtype=torch.float64) / cols**0.5 + torch.eye(cols, dtype=torch.float64)
    x = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ mix
    x[:, :dead] = 0
    return w, 2 * x.T @ x / tokens, x


def boa_ref(w3, h_in, h_out, spec, percdamp=0.01):
    """BoA literally (algorithm.md section 3): grid fixed from the original W; for each row r (all heads):
    GPTQ the row over the columns, then W[:, r+1:, :] -= U_out^T[r+1:, r] (W_r - Q_r) / U_out[r, r]."""
    heads, rows, cols = w3.shape
    w3 = w3.double().clone()
    h = h_in.double() + percdamp * torch.mean(torch.diag(h_in.double())) * torch.eye(cols, dtype=torch.float64)
    u_in = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    u_out = []
    for hh in h_out.double():
        hh = hh + percdamp * torch.mean(torch.diag(hh)) * torch.eye(rows, dtype=torch.float64)
        u_out.append(torch.linalg.cholesky(torch.linalg.inv(hh), upper=True))
    hgrid = h if spec.search == "hessian" else None
    scale, zero = (t.reshape(heads, rows) for t in params_ref(w3.reshape(-1, cols), spec, hgrid))
    codes = torch.zeros_like(w3)
    for r in range(rows):
        row = w3[:, r, :].clone()  # [heads, cols]
        q = torch.zeros_like(row)
        work = row.clone()
        for c in range(cols):
            qc = quantize(work[:, c], scale[:, r], zero[:, r], spec.maxq)
            codes[:, r, c] = qc
            q[:, c] = scale[:, r] * (qc - zero[:, r])
            e = (work[:, c] - q[:, c]) / u_in[c, c]
            work[:, c:] -= torch.outer(e, u_in[c, c:])
        for hd in range(heads):
            u = u_out[hd]
            w3[hd, r + 1 :, :] -= torch.outer(u.T[r + 1 :, r], (row[hd] - q[hd]) / u[r, r])
    return codes.reshape(-1, cols), scale.reshape(-1, 1), zero.reshape(-1, 1)


def random_spd(n: int, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, n, 3 * n, generator=g, dtype=torch.float64)
    return a @ a.transpose(-1, -2) / (3 * n)


def reference_model(run):
    """The run's fake-quantized model with the export's roundings: scales and other tensors through fp16."""
    model = load_fake_quant_model(run)
    _, weights = load_run(run)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
        for name, q in weights.items():
            g = q.g_idx.long()
            model.get_submodule(name).weight.copy_(q.scale.half().float()[:, g] * (q.codes.float() - q.zero[:, g]))
    return model
