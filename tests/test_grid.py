import pytest
import torch

from turboboa_export.algorithms.grid import GridSpec, dequantize, diagonal_blocks, find_params, find_params_2d, quantize
from turboboa_export.algorithms.rtn import rtn_quantize

from .reference import random_layer
from .reference_grid import grid_ref, quantize_ref


def grid_per_group(w, spec, group, h):
    """The reference grid of each row and group of ``w`` [..., rows, cols] (``h``: H_in for the hessian search)
    -> [..., rows, groups]; the groups go to the batch dims, with H_in's diagonal blocks."""
    *batch, rows, cols = w.shape
    wg = w.reshape(*batch, rows, cols // group, group).transpose(-3, -2)  # [..., groups, rows, gs]
    hb = diagonal_blocks(h, group) if h is not None else None
    s, z = grid_ref(wg, spec.bits, spec.sym, spec.search, hb)
    return s.transpose(-1, -2), z.transpose(-1, -2)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("search", ["minmax", "mse", "hessian"])
def test_rtn_equals_reference_grid_and_dequantizes_element_by_element(bits, sym, search):
    w, h, _ = random_layer(12, 64, 256, seed=bits * 7 + sym)
    spec = GridSpec(bits, sym, search)
    q = rtn_quantize(w, spec, 16, h)
    s_ref, z_ref = grid_per_group(w, spec, 16, h)
    assert torch.equal(q.scale, s_ref) and torch.equal(q.zero, z_ref)
    g = torch.arange(64) // 16
    assert torch.equal(q.codes, quantize_ref(w, s_ref[:, g], z_ref[:, g], 2**bits - 1))
    deq = q.dequantize()
    for r in range(12):  # w_hat[r, c] = s[r, c // 16] (q[r, c] - z[r, c // 16]), one element at a time
        for c in range(64):
            want = float(s_ref[r, c // 16]) * (float(q.codes[r, c]) - float(z_ref[r, c // 16]))
            assert float(deq[r, c]) == want, (r, c)
    if sym:
        assert torch.all(q.zero == 2 ** (bits - 1))


def test_hessian_score_equals_direct_formula():
    """The chosen grid minimises (q - w) H_blk (q - w)^T over the candidates, each scored directly."""
    w, h, _ = random_layer(6, 32, 128, seed=3)
    spec = GridSpec(3, False, "hessian")
    scale, zero = find_params_2d(w, spec, 8, h)
    blocks = diagonal_blocks(h, 8)
    for g in range(4):
        assert torch.equal(blocks[g], h[8 * g : 8 * g + 8, 8 * g : 8 * g + 8])
        for r in range(6):
            x = w[r, 8 * g : 8 * g + 8]

            def direct(s, z):
                d = s * (quantize_ref(x, s, z, spec.maxq) - z) - x
                return float(sum(d[i] * blocks[g][i, j] * d[j] for i in range(8) for j in range(8)))

            best = direct(scale[r, g], zero[r, g])
            lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
            for i in range(100):
                p = 1 - i / 100
                s = torch.tensor(p * (hi - lo) / spec.maxq, dtype=torch.float64)
                zc = -p * lo / float(s)
                for z in (torch.floor(torch.tensor(zc)), torch.ceil(torch.tensor(zc))):
                    z = torch.clamp(z, 0, spec.maxq).double()
                    assert best <= direct(s, z) + 1e-12


def test_searches_never_worse_than_minmax_on_their_score():
    w, h, _ = random_layer(16, 64, 256, seed=5)
    for search in ("mse", "hessian"):
        spec = GridSpec(2, False, search)
        mm = GridSpec(2, False, "minmax")
        s1, z1 = find_params_2d(w, spec, -1, h)
        s0, z0 = find_params_2d(w, mm, -1, h)
        def score(s, z):
            d = dequantize(quantize(w, s, z, 3), s, z) - w
            return torch.einsum("ri,ij,rj->r", d, h, d) if search == "hessian" else d.abs().pow(2.4).sum(1)
        # minmax uses round(-min/s); the search considers floor and ceil at p = 1, so it is never worse
        assert torch.all(score(s1, z1) <= score(s0, z0) + 1e-9)


def test_flat_rows_get_a_valid_grid():
    w = torch.zeros(3, 8, dtype=torch.float64)
    s, z = find_params(w.unsqueeze(1), GridSpec(4, False, "minmax"))
    assert torch.all(s > 0)
    q = quantize(w, s, z, 15)
    assert torch.all(dequantize(q, s, z) == 0)


@pytest.mark.parametrize("search", ["mse", "hessian"])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("elements", [2**25, 1000])  # all candidates at once, and many small chunks
def test_chunked_search_equals_reference(monkeypatch, search, sym, elements):
    from turboboa_export.algorithms import grid

    monkeypatch.setattr(grid, "SEARCH_ELEMENTS", {"cpu": elements, "cuda": elements})
    w, h, _ = random_layer(10, 48, 192, seed=21 + sym)
    w = w.reshape(2, 5, 48)  # a batch dim, rows, columns in 3 groups of 16
    spec = GridSpec(3, sym, search)
    got = find_params_2d(w, spec, 16, h.expand(2, -1, -1) if search == "hessian" else None)
    want = grid_per_group(w, spec, 16, h.expand(2, -1, -1) if search == "hessian" else None)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
