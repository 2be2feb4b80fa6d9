"""The integer grid: q = clamp(round(w/s) + z, 0, 2^b - 1), w_hat = s (q - z), and its parameter searches.

Parameters are found per row and per group of columns. A weight block is viewed as ``[rows, groups, gs]``;
scales and zeros come back as ``[rows, groups]`` (algorithm.md section 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import compiled

SEARCHES = ("minmax", "mse", "hessian")
SHRINK_STEPS = 100  # p = 1 - i/100, i = 0..99
# candidate weights scored at once (x ~4 float temporaries): large batches amortize GPU launches, small ones keep
# the CPU's working set in cache
SEARCH_ELEMENTS = {"cuda": 2**25, "cpu": 2**17}
MSE_NORM = 2.4


@dataclass(frozen=True)
class GridSpec:
    """Bit width, symmetry and parameter search of an integer grid."""

    bits: int
    sym: bool = False
    search: str = "minmax"

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    @property
    def sym_zero(self) -> float:
        return float(2 ** (self.bits - 1))


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integer codes q = clamp(round(w/s) + z, 0, maxq), in w's dtype."""
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """w_hat = s (q - z)."""
    return scale * (q - zero)


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Round w onto the grid and back: s (clamp(round(w/s) + z) - z)."""
    return dequantize(quantize(w, scale, zero, maxq), scale, zero)


def _range(w: torch.Tensor, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row min and max over the last dim, widened to contain 0; symmetric grids use +-absmax."""
    wmin = torch.clamp(w.amin(-1), max=0)
    wmax = torch.clamp(w.amax(-1), min=0)
    if sym:
        wmax = torch.maximum(-wmin, wmax)
        wmin = -wmax
    flat = wmax == wmin
    wmin = torch.where(flat, -torch.ones_like(wmin), wmin)
    wmax = torch.where(flat, torch.ones_like(wmax), wmax)
    return wmin, wmax


def candidate_errors(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """d = s (clamp(round(w/s) + z, 0, maxq) - z) - w for every candidate (scale, zero), in ``dtype``."""
    return (fake_quantize(w, scale, zero, maxq) - w).to(dtype)


def row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_j a_j b_j over the last dim, in a's dtype."""
    return (a * b).sum(-1, dtype=a.dtype)


def _stacked_blocks(h_blocks: torch.Tensor, w_shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """The diagonal blocks [..., g, gs, gs] for the weight's batch [..., rows, g, gs], as [B * g, gs, gs] in
    ``dtype``: built once per search, not per chunk of candidates."""
    *batch, _, g, gs = w_shape
    return h_blocks.expand(*batch, g, gs, gs).reshape(-1, gs, gs).to(dtype)


def _hessian_score(d: torch.Tensor, h: torch.Tensor, fused: bool) -> torch.Tensor:
    """d H_blk d^T per candidate, row and group: d [C, ..., rows, g, gs], h the stacked blocks [B * g, gs, gs]
    -> [C, ..., rows, g].
    One batched matmul per (batch entry, group) with the candidates and rows stacked; on a GPU its inputs are the
    bf16 errors (float32 accumulation and output), which only rank candidates. ``fused``: the final dot products
    by one compiled kernel."""
    c, *batch, rows, g, gs = d.shape
    nb = len(batch)
    to_stack = [*range(1, nb + 1), nb + 2, 0, nb + 1, nb + 3]  # [..., g, C, rows, gs]
    stacked = d.permute(to_stack).reshape(-1, c * rows, gs)  # [B * g, C * rows, gs]
    if d.dtype == torch.bfloat16:
        dh = torch.bmm(stacked, h, out_dtype=torch.float32)
    else:
        dh = torch.bmm(stacked, h)
    score = (compiled.fused(row_dots) if fused else row_dots)(dh, stacked)  # [B * g, C * rows]
    return score.reshape(*batch, g, c, rows).permute(nb + 1, *range(nb), nb + 2, nb)


def _score(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: GridSpec, h: torch.Tensor | None,
           fused: bool) -> torch.Tensor:
    """Error of each candidate grid per [rows, groups]: Hessian d H_blk d^T (``h``: the stacked blocks, in the
    errors' dtype) or sum |d|^2.4. ``fused``: errors and dot products by compiled GPU kernels."""
    if fused:
        d = compiled.fused(candidate_errors)(w, scale, zero, spec.maxq, w.dtype if h is None else h.dtype)
    else:
        d = candidate_errors(w, scale, zero, spec.maxq, w.dtype)
    if h is not None:
        return _hessian_score(d, h, fused)
    return d.abs().pow(MSE_NORM).sum(-1)


def candidates(wmin: torch.Tensor, wmax: torch.Tensor, spec: GridSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (scale, zero) the searches try, stacked on a new leading dim in search order: for the shrink
    p = 1 - i/100 (i = 0..99), s = p (max - min) / maxq and z = clamp(floor or ceil of -p min / s) (asymmetric)
    or z = 2^(b-1) (symmetric)."""
    shape = (-1,) + (1,) * wmin.dim()
    p = 1.0 - torch.arange(SHRINK_STEPS, dtype=wmin.dtype, device=wmin.device).reshape(shape) / SHRINK_STEPS
    scale = p * (wmax - wmin) / spec.maxq
    if spec.sym:
        return scale, torch.full_like(scale, spec.sym_zero)
    z = -p * wmin / scale
    zero = torch.stack((torch.floor(z), torch.ceil(z)), dim=1).clamp(0, spec.maxq).flatten(0, 1)  # floor, ceil per p
    return scale.repeat_interleave(2, dim=0), zero


def find_params(
    w: torch.Tensor, spec: GridSpec, h_blocks: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero for each row of each group of ``w`` ([..., rows, groups, gs]) -> two [..., rows, groups]
    tensors.

    ``h_blocks`` ([..., groups, gs, gs]) are the diagonal blocks of H_in for the groups' columns, needed by the
    ``hessian`` search. The searches score all candidates (``candidates``) in chunks of about
    SEARCH_ELEMENTS[device] weights and keep, per row and group, the first candidate with the lowest score.
    """
    if spec.search not in SEARCHES:
        raise ValueError(f"unknown grid search {spec.search!r}; choose one of {', '.join(SEARCHES)}")
    if spec.search == "hessian" and h_blocks is None:
        raise ValueError("the hessian grid search needs the diagonal blocks of H_in")
    wmin, wmax = _range(w, spec.sym)
    if spec.search == "minmax":
        scale = (wmax - wmin) / spec.maxq
        zero = torch.full_like(scale, spec.sym_zero) if spec.sym else torch.round(-wmin / scale)
        return scale, zero
    fused = w.is_cuda and w.dtype == torch.float32  # float64 (the references' dtype) stays exact
    h = None
    if spec.search == "hessian":  # on a GPU, bf16 errors and blocks rank the candidates
        h = _stacked_blocks(h_blocks, w.shape, torch.bfloat16 if fused else w.dtype)
    all_scales, all_zeros = candidates(wmin, wmax, spec)
    best_score = torch.full_like(wmin, float("inf"))
    best_scale = torch.zeros_like(wmin)
    best_zero = torch.zeros_like(wmin)
    budget = SEARCH_ELEMENTS.get(w.device.type, SEARCH_ELEMENTS["cpu"])
    chunk = max(1, budget // max(1, w.numel()))
    for c in range(0, all_scales.shape[0], chunk):
        scale, zero = all_scales[c : c + chunk], all_zeros[c : c + chunk]
        score = torch.nan_to_num(_score(w, scale.unsqueeze(-1), zero.unsqueeze(-1), spec, h, fused), nan=float("inf"))
        idx = score.argmin(0, keepdim=True)  # the first lowest within the chunk
        low = score.gather(0, idx)[0]
        better = low < best_score  # an earlier chunk keeps ties
        best_score = torch.where(better, low, best_score)
        best_scale = torch.where(better, scale.gather(0, idx)[0], best_scale)
        best_zero = torch.where(better, zero.gather(0, idx)[0], best_zero)
    return best_scale, best_zero


def diagonal_blocks(h: torch.Tensor, group_size: int) -> torch.Tensor:
    """The [..., groups, gs, gs] diagonal blocks of a [..., cols, cols] matrix."""
    cols = h.shape[-1]
    g = cols // group_size
    hb = h.reshape(*h.shape[:-2], g, group_size, g, group_size)
    return torch.diagonal(hb, dim1=-4, dim2=-2).movedim(-1, -3)


def find_params_2d(
    w: torch.Tensor, spec: GridSpec, group_size: int, h: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zeros [..., rows, groups] for a [..., rows, cols] matrix split into groups of ``group_size``
    columns (``-1``: one group, per channel). ``h`` is the [..., cols, cols] H_in for the hessian search."""
    *batch, rows, cols = w.shape
    gs = cols if group_size == -1 else group_size
    h_blocks = diagonal_blocks(h, gs) if h is not None and spec.search == "hessian" else None
    return find_params(w.reshape(*batch, rows, cols // gs, gs), spec, h_blocks)
