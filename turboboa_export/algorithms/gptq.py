"""GPTQ (Frantar et al. 2022) with lazy column blocks, act-order and groups, and the GPTAQ column rule
for propagated-error correction (algorithm.md section 2).

Everything here is a pure function of tensors; the column loop works in the act-order permutation and
``gptq_quantize`` maps the result back to the original column order.
"""

from __future__ import annotations

import torch

from ..errors import NumericalError
from .column_segment import run_segment
from .grid import GridSpec, find_params, find_params_2d
from .precision import tf32_matmuls
from .quantized import QuantizedWeight, contiguous_g_idx

LAZY_BLOCK = 128
MAX_DAMP_TRIES = 10
DAMP_FLOOR = 1e-4  # relative damping the retries start from when --damp is 0
DAMP_GROWTH = 4.0  # each retry damps this many times more


def fill_dead(h: torch.Tensor) -> torch.Tensor:
    """Diagonal entries H_ii = 0 (an input channel, or an output row, the calibration data never excites) set to the
    mean of the live diagonal (1 where nothing is live: a zero-trace H becomes I), so that H can be factored and the
    channel keeps its weights, quantized on its row's grid with no error fed to or from it (H has no off-diagonal
    entries in its row and column). Leading batch dims ([..., n, n]) are kept."""
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    dead = diag == 0
    live = (~dead).sum(-1, keepdim=True)
    fill = torch.where(live > 0, diag.sum(-1, keepdim=True) / live.clamp(min=1), torch.ones_like(diag[..., :1]))
    return h + torch.diag_embed(torch.where(dead, fill, torch.zeros_like(diag)))


def damp(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """H + percdamp * mean(diag H) * I (for a batch of matrices, each its own mean; 1 where the mean is not positive)."""
    mean = torch.diagonal(h, dim1=-2, dim2=-1).mean(-1)[..., None, None]
    mean = torch.where(mean > 0, mean, torch.ones_like(mean))
    out = h.clone()
    out.diagonal(dim1=-2, dim2=-1).add_(percdamp * mean[..., 0])  # no n x n identity: H may be 28672 wide in float64
    return out


def token_damping(percdamp: float, sample_damp: float, width: int, tokens: int) -> float:
    """The relative damping of a ``width`` x ``width`` Hessian summed over ``tokens`` samples:
    percdamp + sample_damp * width / tokens. Few tokens next to the width leave H a noisy estimate (of rank at most
    ``tokens``) that GPTQ's updates fit, so the damping grows as width / tokens (issue 20; measured in
    docs/results.md). Raises ValueError for a non-positive ``tokens``."""
    if tokens <= 0:
        raise ValueError(f"a Hessian needs tokens; got {tokens}")
    return percdamp + sample_damp * width / tokens


def inverse_cholesky_upper(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """U with H^-1 = U^T U (upper Cholesky of the inverse), for H [..., n, n] with dead entries already filled.

    The factorisation runs in float64 and U is returned in H's dtype: in float32 its error (up to about cond(H) x 6e-8)
    depends on the CPU thread count, and GPTQ's and BoA's error feedback turns the few codes it flips into a
    different model (issue 20: 4.5% of Gemma-3-270M's block-0 q_proj codes between 1 and 2 threads).
    The first try damps by ``percdamp`` (which may be 0); each retry damps by DAMP_GROWTH times more, starting from
    at least DAMP_FLOOR, so that zero damping of a rank-deficient H still ends positive definite. Raises
    NumericalError when MAX_DAMP_TRIES are not enough (H holds NaN or inf).
    """
    for attempt in range(MAX_DAMP_TRIES):
        frac = percdamp if attempt == 0 else max(percdamp, DAMP_FLOOR) * DAMP_GROWTH**attempt
        lower, info = torch.linalg.cholesky_ex(damp(h.double(), frac))  # no float64 copy of H kept across tries
        if not bool(info.any()):
            hinv = torch.cholesky_inverse(lower)  # (H + frac mean(diag H) I)^-1
            del lower
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            del hinv
            if not bool(info.any()):
                return upper.to(h.dtype)
    finite = bool(torch.isfinite(h).all())
    raise NumericalError(
        f"its {h.shape[-1]}x{h.shape[-1]} Hessian is not positive definite even damped by {frac:g} of its mean "
        + ("diagonal; raise --damp or add calibration data" if finite
           else "diagonal: it holds NaN or inf, so the model's weights or activations overflow; check the model")
    )


def gptaq_p(r: torch.Tensor, u: torch.Tensor, tf32: bool = False) -> torch.Tensor:
    """GPTAQ's correction matrix P = triu(R U^T, 1) U; ``tf32``: its two products on TF32 tensor cores."""
    with tf32_matmuls(u.device, tf32):
        return torch.triu(r @ u.transpose(-1, -2), diagonal=1) @ u


def segment_bounds(cols: int, group_size: int, grids_known: bool) -> list[tuple[int, int]]:
    """Column segments: lazy blocks of LAZY_BLOCK columns, also cut at each group start when the group grids
    are found on the way (so a group's grid sees its columns fully updated)."""
    cuts = set(range(0, cols, LAZY_BLOCK))
    if not grids_known and group_size != -1:
        cuts |= set(range(0, cols, group_size))
    cuts = sorted(cuts) + [cols]
    return list(zip(cuts[:-1], cuts[1:]))


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

    Per column c: q = Q(W[:, c]); e = (W[:, c] - q) / U_cc; W[:, c:] -= e U[c, c:] - W[:, c] P[c, c:]
    (``p`` is GPTAQ's P, None for plain GPTQ), one segment at a time (``column_segment``), the later columns
    updated once per segment. ``params`` fixes the grid ([rows, groups] scales and zeros); otherwise group
    grids come from the updated columns when the pass reaches the group. ``h`` is needed by the hessian
    search. Returns codes, scales, zeros.
    """
    w = w.clone()
    *batch, rows, cols = w.shape
    gs = cols if group_size == -1 else group_size
    if params is None:
        scale = torch.zeros(*batch, rows, cols // gs, dtype=w.dtype, device=w.device)
        zero = torch.zeros_like(scale)
    else:
        scale, zero = (t.clone() for t in params)
    g_idx = contiguous_g_idx(cols, group_size, w.device).long()
    codes = torch.zeros_like(w)
    for a, b in segment_bounds(cols, group_size, params is not None):
        if params is None and a % gs == 0:
            hb = h[..., a : a + gs, a : a + gs].unsqueeze(-3) if spec.search == "hessian" else None
            s, z = find_params(w[..., a : a + gs].unsqueeze(-2), spec, hb)
            scale[..., a // gs], zero[..., a // gs] = s[..., 0], z[..., 0]
        g = g_idx[a:b]
        p1 = p[..., a:b, a:b] if p is not None else None
        c1, err1, cols1 = run_segment(w[..., a:b], u[..., a:b, a:b], p1, scale[..., g], zero[..., g], spec.maxq)
        codes[..., a:b] = c1
        tail = err1 @ u[..., a:b, b:]
        if p is not None:
            tail = tail - cols1 @ p[..., a:b, b:]
        w[..., b:] -= tail
    return codes, scale, zero


def act_order_permutation(h: torch.Tensor) -> torch.Tensor:
    """Columns by decreasing diag(H) (averaged over leading batch dims)."""
    d = torch.diagonal(h, dim1=-2, dim2=-1)
    return torch.argsort(d.reshape(-1, d.shape[-1]).mean(0), descending=True, stable=True)


def prepare_columns(w, h, r=None, act_order=False):
    """Dead-column fill (``fill_dead``: the weights are kept) and (optional) act-order permutation of W's columns,
    H and R -> (w, h, r, perm). R's dead columns are zero already: R = (2/T) sum (x_fp - x_q) x_q^T."""
    h = fill_dead(h)
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
    tf32_p: bool = False,
) -> QuantizedWeight:
    """GPTQ on one [out, in] weight with Hessian H_in (or a batch [b, out, in] with [b, in, in]); ``r`` (already
    scaled by alpha) turns on GPTAQ, whose P is computed in TF32 with ``tf32_p``."""
    w, h, r, perm = prepare_columns(w, h, r, act_order)
    u = inverse_cholesky_upper(h, percdamp)
    p = gptaq_p(r, u, tf32_p) if r is not None else None
    h_grid = damp(h, percdamp) if spec.search == "hessian" else None
    params = find_params_2d(w, spec, -1, h_grid) if group_size == -1 else None
    codes, scale, zero = column_pass(w, u, spec, group_size, h_grid, params, p)
    codes, g_idx = unpermute(codes, perm, group_size)
    return QuantizedWeight(codes, scale, zero, g_idx)
