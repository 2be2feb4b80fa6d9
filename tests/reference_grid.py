"""The integer grid and its parameter searches as algorithm.md section 1 states them, all candidates scored at once.

Test-only and independent of ``turboboa_export`` (it imports torch alone), so the library's grid can be checked
against it. Two choices the spec leaves open follow the library and are stated here: a row whose range is {0}
gets the range [-1, 1]; among equal scores the first candidate (in order p = 1, 0.99, ...; floor before ceil) wins.
"""

from __future__ import annotations

import torch

SHRINKS = [1 - i / 100 for i in range(100)]  # p = 1 - i/100, i = 0..99


def quantize_ref(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, maxq: int) -> torch.Tensor:
    """q = clamp(round(w/s) + z, 0, 2^b - 1)."""
    return torch.clamp(torch.round(w / s) + z, 0, maxq)


def minmax_range(w: torch.Tensor, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (last dim) min and max widened to contain 0; symmetric: +-absmax."""
    lo = torch.clamp(w.amin(-1), max=0)
    hi = torch.clamp(w.amax(-1), min=0)
    if sym:
        hi = torch.maximum(-lo, hi)
        lo = -hi
    flat = hi == lo
    return torch.where(flat, -1.0, lo).to(w.dtype), torch.where(flat, 1.0, hi).to(w.dtype)


def grid_ref(w: torch.Tensor, bits: int, sym: bool, search: str, h: torch.Tensor | None = None):
    """Scale and zero per row of ``w`` [..., rows, n] -> two [..., rows] tensors. ``h`` [..., n, n] (broadcast
    over rows) scores the ``hessian`` search by (q - w) H (q - w)^T; ``mse`` by sum |q - w|^2.4."""
    maxq = 2**bits - 1
    lo, hi = minmax_range(w, sym)
    if search == "minmax":
        s = (hi - lo) / maxq
        return s, torch.full_like(s, 2 ** (bits - 1)) if sym else torch.round(-lo / s)
    cands = []  # (s, z) in search order: p = 1, 0.99, ...; floor before ceil
    for p in SHRINKS:
        s = p * (hi - lo) / maxq
        zs = [torch.full_like(s, 2 ** (bits - 1))] if sym else [torch.floor(-p * lo / s), torch.ceil(-p * lo / s)]
        cands += [(s, torch.clamp(z, 0, maxq)) for z in zs]
    s, z = (torch.stack(t).unsqueeze(-1) for t in zip(*cands))  # [candidates, ..., rows, 1]
    d = s * (quantize_ref(w, s, z, maxq) - z) - w
    score = ((d @ h) * d).sum(-1) if search == "hessian" else d.abs().pow(2.4).sum(-1)  # d H d^T, or sum |d|^2.4
    best = score.argmin(0, keepdim=True)  # the first of equal scores
    return s[..., 0].gather(0, best)[0], z[..., 0].gather(0, best)[0]
