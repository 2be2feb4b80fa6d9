"""Which calibration stream feeds which statistic (algorithm.md sections 1 and 5), on a tiny Llama block: H_in,
H_out and V's attention-weighted H_in come from the quantized stream alone; R and R_v from both; the next block's
full-precision inputs from the full-precision stream alone. Each stream is perturbed in turn."""

import pytest
import torch

from turboboa_export.arch import attention_shape
from turboboa_export.pipeline.attention_stats import AttentionStatistics
from turboboa_export.pipeline.capture import run_block
from turboboa_export.pipeline.sequential import collect_statistics

from .test_attention_stats import setup


@pytest.fixture(scope="module")
def block0(tiny_models):
    model, spec, layers, cap = setup(tiny_models["llama"])
    return layers[0], spec, attention_shape(model.config), cap.inputs, cap.kwargs[0]


def noisy(xs, seed):
    g = torch.Generator().manual_seed(seed)
    return [x + 0.1 * x.std() * torch.randn(x.shape, generator=g, dtype=x.dtype) for x in xs]


def statistics(block0, fp, q):
    """(moments by input, attention statistics, full-precision outputs) of one statistics pass."""
    block, spec, shape, _, kwargs = block0

    def attention(b):
        return AttentionStatistics(b.get_submodule(spec.attn), spec, shape, with_r=True, dtype=torch.float64)

    stats, fp_out = collect_statistics(block, spec, fp, q, kwargs, True, attention)
    return stats.moments, stats.attention, fp_out


def test_h_in_and_r_of_the_attention_input_follow_their_formulas(block0):
    """H_in = (2/T) sum x_q x_q^T and R = (2/T) sum (x_fp - x_q) x_q^T with x the input-normed hidden state of each
    stream; tolerance: float32 sums of T terms (T eps_32 relative)."""
    block, _, _, fp, _ = block0
    q = noisy(fp, 0)
    moments, _, _ = statistics(block0, fp, q)
    with torch.no_grad():
        xq = torch.cat([block.input_layernorm(x) for x in q])
        xf = torch.cat([block.input_layernorm(x) for x in fp])
    t = len(xq)
    h, r = 2 * xq.T @ xq / t, 2 * (xf - xq).T @ xq / t
    tol = t * torch.finfo(torch.float32).eps
    assert float((moments["attn"].h().double() - h).abs().max() / h.abs().max()) < tol
    assert float((moments["attn"].r().double() - r).abs().max() / r.abs().max()) < tol


def test_perturbing_one_stream_moves_only_its_statistics(block0):
    fp = block0[3]
    q = noisy(fp, 0)
    moments, attn, fp_out = statistics(block0, fp, q)
    m_fp, a_fp, out_fp = statistics(block0, noisy(fp, 1), q)  # full-precision stream moved
    m_q, a_q, out_q = statistics(block0, fp, noisy(q, 2))  # quantized stream moved
    for key in moments:
        assert torch.equal(m_fp[key].h(), moments[key].h()), key
        assert not torch.equal(m_fp[key].r(), moments[key].r()), key
        assert not torch.equal(m_q[key].h(), moments[key].h()), key
    for name in ("h_out_q", "h_out_k", "h_in_v"):
        base = getattr(attn, name)()
        assert torch.equal(getattr(a_fp, name)(), base), name
        assert not torch.equal(getattr(a_q, name)(), base), name
    assert not torch.equal(a_fp.r_v(), attn.r_v()) and not torch.equal(a_q.r_v(), attn.r_v())
    assert all(torch.equal(a, b) for a, b in zip(out_q, fp_out))
    assert not any(torch.equal(a, b) for a, b in zip(out_fp, fp_out))
    with torch.no_grad():
        assert all(torch.equal(a, run_block(block0[0], x, block0[4])) for a, x in zip(fp_out, fp))


def test_equal_streams_give_zero_residuals(block0):
    """x_fp = x_q: R = 0 and R_v = 0 (F2 then changes nothing)."""
    fp = block0[3]
    moments, attn, _ = statistics(block0, fp, [x.clone() for x in fp])
    assert all(float(m.r().abs().max()) == 0 for m in moments.values())
    assert float(attn.r_v().abs().max()) < 1e-12 * float(attn.h_in_v().abs().max())
