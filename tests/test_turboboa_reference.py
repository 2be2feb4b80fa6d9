"""The library's TurboBoA against the independent float64 reference (tests/reference_turboboa.py) on random SPD
statistics and random weights: codes and zeros bit for bit, scales to float64 rounding (far inside the issue's
1e-8).

Each case catches a different wrong wiring: N > 1 without the row pass (F1), F2's row term dropped or of the wrong
sign, F2's column rule, the per-block grid taken from the original W (F3), refinement skipped or without R."""

import pytest
import torch

from turboboa_export.algorithms.grid import GridSpec
from turboboa_export.algorithms.turboboa import TurboBoAOptions, turboboa_one_sided, turboboa_two_sided

from .reference_turboboa import one_sided_ref, turboboa_ref

HEADS, ROWS, COLS = 2, 20, 32  # N = 16 leaves a partial second block
# the two differ only in the order of float64 roundings: relative to the scales, at most a sum of COLS products'
# worth (7e-15; observed: 7.4e-16)
TOL = COLS * torch.finfo(torch.float64).eps


def statistics(seed: int, cols: int = COLS, dead: int = 0):
    """H_in = (2/T) X_q^T X_q and R = (2/T) (X_fp - X_q)^T X_q from correlated tokens, H_out random SPD per head."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols, dtype=torch.float64) + torch.randn(cols, cols, generator=g, dtype=torch.float64) / cols**0.5
    x_fp = torch.randn(4 * cols, cols, generator=g, dtype=torch.float64) @ mix
    x_q = x_fp + 0.3 * torch.randn(x_fp.shape, generator=g, dtype=torch.float64)
    x_q[:, :dead] = 0
    t = len(x_q)
    a = torch.randn(HEADS, ROWS, 3 * ROWS, generator=g, dtype=torch.float64)
    h_out = a @ a.transpose(-1, -2) / (3 * ROWS)
    w = torch.randn(HEADS, ROWS, cols, generator=g, dtype=torch.float64)
    return w, 2 * x_q.T @ x_q / t, 2 * (x_fp - x_q).T @ x_q / t, h_out


def assert_matches(got, codes, scale, zero):
    assert torch.equal(got.codes, codes.reshape(got.codes.shape))
    assert torch.equal(got.zero, zero.reshape(got.zero.shape))
    err = float((got.scale - scale.reshape(got.scale.shape)).abs().max() / scale.abs().max())
    assert err < TOL, err


@pytest.mark.parametrize("refine", [0, 1])
@pytest.mark.parametrize("group", [-1, 8])
@pytest.mark.parametrize("alpha", [0.0, 0.25])
@pytest.mark.parametrize("n", [1, 4, 16])
def test_two_sided_equals_reference(n, alpha, group, refine):
    w, h_in, r, h_out = statistics(seed=n * 10 + int(alpha * 4) + (group > 0) * 100 + refine * 1000)
    spec = GridSpec(2, False, "hessian")
    got = turboboa_two_sided(w, h_in, h_out, spec, group, alpha * r if alpha else None,
                             TurboBoAOptions(rows=n, refine_iters=refine))
    want = turboboa_ref(w, h_in, h_out, 2, group_size=group, r=r, alpha=alpha, n=n, refine_iters=refine)
    assert_matches(got, *want)


@pytest.mark.parametrize("bits,sym,search,adaptive,dead", [
    (3, False, "mse", True, 0), (3, True, "hessian", True, 2), (2, False, "minmax", False, 1),
    (4, False, "hessian", False, 0)])
def test_two_sided_other_grids_equal_reference(bits, sym, search, adaptive, dead):
    """Other widths, symmetric and non-hessian grids, BoA's fixed grid with F2 and F3, dead columns."""
    w, h_in, r, h_out = statistics(seed=bits * 7 + dead, dead=dead)
    got = turboboa_two_sided(w, h_in, h_out, GridSpec(bits, sym, search), 8, 0.25 * r,
                             TurboBoAOptions(rows=4, adaptive_grid=adaptive, refine_iters=2))
    want = turboboa_ref(w, h_in, h_out, bits, sym=sym, search=search, group_size=8, r=r, alpha=0.25, n=4,
                        adaptive_grid=adaptive, refine_iters=2)
    assert_matches(got, *want)


@pytest.mark.parametrize("refine", [0, 1])
@pytest.mark.parametrize("group", [-1, 8])
@pytest.mark.parametrize("alpha", [0.0, 0.25])
def test_one_sided_equals_reference(alpha, group, refine):
    """o/gate/up/down (and each kv head of v): GPTQ with F2's column rule and F3's refinement."""
    w, h_in, r, _ = statistics(seed=500 + int(alpha * 4) + (group > 0) * 10 + refine * 100)
    w = w.reshape(-1, COLS)
    got = turboboa_one_sided(w, h_in, GridSpec(2, False, "hessian"), group, alpha * r if alpha else None,
                             TurboBoAOptions(refine_iters=refine))
    assert_matches(got, *one_sided_ref(w, h_in, 2, group_size=group, r=r, alpha=alpha, refine_iters=refine))
