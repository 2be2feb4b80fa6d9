import pytest
import torch

from turboboa_export.algorithms.gptq import gptq_quantize
from turboboa_export.algorithms.grid import GridSpec
from turboboa_export.algorithms.quantized import weight_loss
from turboboa_export.algorithms.rtn import rtn_quantize

from .reference import gptq_ref, random_layer

CASES = [
    # bits, group, act_order, search, dead, cols
    (4, -1, False, "minmax", 0, 96),
    (3, -1, True, "hessian", 2, 96),
    (2, 32, False, "mse", 0, 192),
    (4, 32, True, "minmax", 1, 192),
    (3, 64, True, "hessian", 0, 256),
    (8, 16, False, "minmax", 0, 160),
]


@pytest.mark.parametrize("bits,group,act_order,search,dead,cols", CASES)
@pytest.mark.parametrize("gptaq", [False, True])
def test_gptq_equals_per_column_reference(bits, group, act_order, search, dead, cols, gptaq):
    seed = bits * 100 + cols + int(act_order) + 7 * int(gptaq)
    w, h, x = random_layer(12, cols, 4 * cols, seed=seed, dead=dead)
    r = None
    if gptaq:
        g = torch.Generator().manual_seed(seed + 1)
        x_fp = x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)
        x_fp[:, :dead] = 0
        r = 0.25 * 2 * (x_fp - x).T @ x / x.shape[0]
    spec = GridSpec(bits, False, search)
    got = gptq_quantize(w, h, spec, group, 0.01, act_order, r)
    codes, scale, zero, perm = gptq_ref(w, h, spec, group, 0.01, act_order, r)
    inv = torch.argsort(perm)
    assert torch.equal(got.codes, codes[:, inv])
    assert torch.allclose(got.scale, scale, rtol=0, atol=1e-9)
    assert torch.allclose(got.zero, zero, rtol=0, atol=0)
    # dequantized weights agree to 1e-9
    gs = cols if group == -1 else group
    ref_deq = (scale[:, torch.arange(cols) // gs] * (codes - zero[:, torch.arange(cols) // gs]))[:, inv]
    assert torch.allclose(got.dequantize(), ref_deq, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_gptq_loss_below_rtn(seed):
    bits = [2, 3, 4][seed % 3]
    group = [-1, 32][seed % 2]
    w, h, _ = random_layer(32, 128, 512, seed=1000 + seed)
    spec = GridSpec(bits, False, "minmax")
    g = gptq_quantize(w, h, spec, group, 0.01, seed % 2 == 0)
    r = rtn_quantize(w, spec, group)
    assert weight_loss(w, g.dequantize(), h) < weight_loss(w, r.dequantize(), h)


def test_dead_columns_keep_their_weights_rounded_on_the_row_grid():
    w, h, _ = random_layer(8, 64, 256, seed=9, dead=3)
    q = gptq_quantize(w, h, GridSpec(4), -1)
    # no error reaches a column the data never excites, so it is plain round-to-nearest on its row's grid
    nearest = q.scale * (torch.clamp(torch.round(w[:, :3] / q.scale) + q.zero, 0, 15) - q.zero)
    assert torch.equal(q.dequantize()[:, :3], nearest)
    assert q.dequantize()[:, :3].abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.parametrize("gptaq", [False, True])
@pytest.mark.parametrize("batch", [(), (3,)])
def test_graphed_segment_equals_eager(gptaq, batch):
    from turboboa_export.algorithms.column_segment import GRAPHS, segment_pass

    g = torch.Generator(device="cuda").manual_seed(11 + len(batch) + 2 * gptaq)
    n, rows = 96, 40
    a = torch.randn(*batch, n, 3 * n, device="cuda", generator=g)
    u = torch.linalg.cholesky(torch.linalg.inv(a @ a.transpose(-1, -2) / n + torch.eye(n, device="cuda")),
                              upper=True)
    p = torch.triu(torch.randn(*batch, n, n, device="cuda", generator=g), 1) * 0.01 if gptaq else None
    w = torch.randn(*batch, rows, n, device="cuda", generator=g)
    s = torch.rand(*batch, rows, n, device="cuda", generator=g) * 0.3 + 0.1
    z = torch.full_like(s, 2.0)
    w_eager, w_graph = w.clone(), w.clone()
    eager = segment_pass(w_eager, u, p, s, z, 3)
    for _ in range(2):  # the second call replays the cached graph
        w_graph = w.clone()
        graphed = GRAPHS.run(w_graph, u, p, s, z, 3)
    assert torch.equal(w_eager, w_graph)
    for x, y in zip(eager, graphed):
        assert torch.equal(x, y)


@pytest.mark.gpu
@pytest.mark.parametrize("bits,group,act_order,search,dead,cols", CASES[1:4])
def test_gptq_on_cuda_equals_reference(bits, group, act_order, search, dead, cols):
    w, h, x = random_layer(12, cols, 4 * cols, seed=bits + cols, dead=dead)
    spec = GridSpec(bits, False, search)
    got = gptq_quantize(w.cuda(), h.cuda(), spec, group, 0.01, act_order)
    codes, scale, zero, perm = gptq_ref(w, h, spec, group, 0.01, act_order)
    assert torch.equal(got.codes.cpu(), codes[:, torch.argsort(perm)])
    assert torch.allclose(got.scale.cpu(), scale, rtol=0, atol=1e-9)
