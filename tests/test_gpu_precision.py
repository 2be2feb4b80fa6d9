"""The GPU's reduced-precision paths against float64 references on fresh random inputs (CUDA only): the bf16
ranking of the hessian grid search, half-precision statistics products, TF32 F2/F3 corrections."""

import copy

import pytest
import torch

from turboboa_export.algorithms.grid import GridSpec, dequantize, find_params_2d, quantize
from turboboa_export.pipeline.statistics import SecondMoments

from .reference import random_layer

pytestmark = pytest.mark.gpu


def exact_score(w, h, s, z, maxq):
    d = dequantize(quantize(w, s[:, None], z[:, None], maxq), s[:, None], z[:, None]) - w
    return torch.einsum("ri,ij,rj->r", d, h, d)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_bf16_ranked_grid_is_near_the_exact_best(bits):
    """Per row, the grid the float32 GPU search picks scores (exactly, float64) within 0.1% of the exact search's."""
    from .reference import params_ref

    w, h, _ = random_layer(64, 256, 1024, seed=bits)
    spec = GridSpec(bits, False, "hessian")
    s, z = find_params_2d(w.float().cuda(), spec, -1, h.float().cuda())
    s_ref, z_ref = params_ref(w, spec, h)
    got = exact_score(w, h, s[:, 0].cpu().double(), z[:, 0].cpu().double(), spec.maxq)
    best = exact_score(w, h, s_ref, z_ref, spec.maxq)
    assert torch.all(got <= best * (1 + 1e-3) + 1e-12), float((got / best).max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_second_moments_match_float64(dtype):
    g = torch.Generator().manual_seed(int(dtype == torch.float16))
    x_q = (torch.randn(4, 256, 96, generator=g) * 3).to(dtype)
    x_fp = (x_q.double() + 0.05 * torch.randn(x_q.shape, generator=g, dtype=torch.float64)).to(dtype)
    m = SecondMoments(96, torch.device("cuda"), with_r=True)
    for a, b in zip(x_q, x_fp):
        m.add(a.cuda(), b.cuda())
    xq, xf = x_q.double().reshape(-1, 96), x_fp.double().reshape(-1, 96)
    h_ref = 2 * xq.T @ xq / xq.shape[0]
    r_ref = 2 * (xf - xq).T @ xq / xq.shape[0]
    assert float((m.h().double().cpu() - h_ref).norm() / h_ref.norm()) < 1e-6
    assert float((m.r().double().cpu() - r_ref).norm() / r_ref.norm()) < 1e-4


@pytest.mark.parametrize("route", ["z", "gram"])
def test_bf16_attention_statistics_match_float64(route):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    from turboboa_export.arch import LLAMA, attention_shape
    from turboboa_export.pipeline.attention_stats import AttentionStatistics

    cfg = LlamaConfig(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                      intermediate_size=256)
    torch.manual_seed(5)
    attn = LlamaAttention(cfg, 0).eval().requires_grad_(False)
    for p in attn.parameters():  # bf16-valued weights, so that both sides run the same model
        p.data = p.data.bfloat16().double()
    L = 96
    pos = torch.arange(L)[None]
    rope = LlamaRotaryEmbedding(cfg)
    cos, sin = rope(torch.zeros(1, L, 128, dtype=torch.float64), pos)
    g = torch.Generator().manual_seed(6)
    xs_q = [torch.randn(L, 128, generator=g, dtype=torch.float64).bfloat16() for _ in range(3)]
    xs_fp = [(x.double() + 0.05 * torch.randn(L, 128, generator=g, dtype=torch.float64)).bfloat16() for x in xs_q]
    shape = attention_shape(cfg)

    def collect(module, device, dtype, stats_dtype):
        stats = AttentionStatistics(module, LLAMA, shape, with_r=True, dtype=stats_dtype, route=route)
        kw = {"position_embeddings": (cos.to(device, dtype), sin.to(device, dtype))}
        with torch.no_grad():
            for xq, xf in zip(xs_q, xs_fp):
                stats.add(xq.to(device, dtype), xf.to(device, dtype), kw)
        return stats

    ref = collect(attn, "cpu", torch.float64, torch.float64)
    gpu = collect(copy.deepcopy(attn).to("cuda", torch.bfloat16), "cuda", torch.bfloat16, torch.float32)
    for name, tol in (("h_in_v", 5e-3), ("r_v", 3e-2), ("h_out_q", 1e-2), ("h_out_k", 1e-2)):
        got, want = getattr(gpu, name)().double().cpu(), getattr(ref, name)()
        assert float((got - want).norm() / want.norm()) < tol, name


def test_tf32_corrections_keep_turboboa_loss():
    """TurboBoA on float32 CUDA with TF32 F2/F3 corrections loses (exactly scored) within 1% of the float32 run."""
    from turboboa_export.algorithms.turboboa import TurboBoAOptions, turboboa_one_sided

    w, h, x = random_layer(48, 192, 800, seed=7)
    g = torch.Generator().manual_seed(8)
    x_fp = x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    r = 0.25 * 2 * (x_fp - x).T @ x / x.shape[0]
    spec = GridSpec(3, False, "hessian")
    target = x_fp @ w.T
    losses = []
    for tf32 in (False, True):
        q = turboboa_one_sided(w.float().cuda(), h.float().cuda(), spec, -1, r.float().cuda(),
                               TurboBoAOptions(tf32=tf32))
        losses.append(float(((x @ q.dequantize().double().cpu().T - target) ** 2).sum()))
    assert losses[1] <= losses[0] * 1.01
