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


def test_dead_columns_are_zero():
    w, h, _ = random_layer(8, 64, 256, seed=9, dead=3)
    q = gptq_quantize(w, h, GridSpec(4), -1)
    assert torch.all(q.dequantize()[:, :3].abs() < 1e-12)
