"""The method registry wires each role to the algorithm algorithm.md section 5 names, with the config's settings:
checked against the float64 references on random statistics (no model). Catches alpha dropped, q/k quantized
one-sided, refinement switched off, BoA's settings (N = 1, fixed grid, no F2/F3), v's attention-weighted H_in
and R_v replaced, and a damping that ignores the token counts (or takes H_in's count or width for H_out's)."""

import pytest
import torch

from turboboa_export.arch import AttentionShape
from turboboa_export.algorithms.grid import GridSpec
from turboboa_export.config import QuantConfig
from turboboa_export.methods import get_method

from .reference import gptq_ref
from .reference_turboboa import one_sided_ref, turboboa_ref

SHAPE = AttentionShape(heads=4, kv_heads=2, head_dim=8)
D_IN = 32
TOL = D_IN * torch.finfo(torch.float64).eps  # relative: float64 roundings of D_IN-term sums, ordered differently


def spd(*batch, n, seed):
    a = torch.randn(*batch, n, 3 * n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.transpose(-1, -2) / (3 * n)


def small(*shape, seed):
    return 0.1 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


H_TOKENS, ATTENTION_TOKENS = 96, 40  # few tokens, and different ones, so that each damping is told apart


class Attention:
    """What ``AttentionStatistics`` hands the methods, as fixed random tensors."""

    tokens = ATTENTION_TOKENS

    q = spd(SHAPE.heads, n=SHAPE.head_dim, seed=1)
    k = spd(SHAPE.kv_heads, n=SHAPE.head_dim, seed=2)
    hv = spd(SHAPE.kv_heads, n=D_IN, seed=3)
    rv = small(SHAPE.kv_heads, D_IN, D_IN, seed=4)

    def h_out_q(self):
        return self.q

    def h_out_k(self):
        return self.k

    def h_in_v(self):
        return self.hv

    def r_v(self):
        return self.rv


class Statistics:
    """What ``BlockStatistics`` hands the methods: one H_in and R for every role."""

    attention = Attention()
    half = False

    def h(self, role):
        return spd(n=D_IN, seed=5)

    def r(self, role):
        return small(D_IN, D_IN, seed=6)

    def tokens(self, role):
        return H_TOKENS


def damping(cfg, width, tokens):
    """Issue 20's damping, written out: damp + sample_damp * width / tokens."""
    return cfg.damp + cfg.sample_damp * width / tokens


def out_features(role):
    return {"q": SHAPE.heads, "o": SHAPE.heads}.get(role, SHAPE.kv_heads) * SHAPE.head_dim


def expected(role, w, cfg, stats):
    """(codes, scales, zeros) of the reference algorithm the method must run for ``role``."""
    turbo = cfg.method == "turboboa"
    adaptive = turbo if cfg.adaptive_grid is None else cfg.adaptive_grid  # BoA: fixed unless asked
    kw = dict(sym=cfg.sym, search=cfg.grid, group_size=cfg.group_size, alpha=cfg.alpha if turbo else 0.0,
              refine_iters=cfg.refine_iters if turbo else 0)
    damp_in = damping(cfg, D_IN, H_TOKENS)
    if cfg.method == "gptq":
        codes, scale, zero, _ = gptq_ref(w, stats.h(role), GridSpec(cfg.bits, cfg.sym, cfg.grid), cfg.group_size,
                                         damp_in)
        return codes, scale, zero
    if role in ("q", "k"):
        h_out = stats.attention.h_out_q() if role == "q" else stats.attention.h_out_k()
        return turboboa_ref(w.reshape(len(h_out), SHAPE.head_dim, D_IN), stats.h(role), h_out, cfg.bits,
                            r=stats.r(role), n=cfg.rows if turbo else 1, adaptive_grid=adaptive, percdamp=damp_in,
                            percdamp_out=damping(cfg, SHAPE.head_dim, ATTENTION_TOKENS), **kw)
    if role == "v":  # each kv head with its attention-weighted H_in and R_v
        damp_v = damping(cfg, D_IN, ATTENTION_TOKENS)
        per_head = [one_sided_ref(wk, hk, cfg.bits, r=rk, percdamp=damp_v, **kw) for wk, hk, rk in
                    zip(w.reshape(SHAPE.kv_heads, SHAPE.head_dim, D_IN), stats.attention.hv, stats.attention.rv)]
        return tuple(torch.cat(t) for t in zip(*per_head))
    return one_sided_ref(w, stats.h(role), cfg.bits, r=stats.r(role), percdamp=damp_in, **kw)


@pytest.mark.parametrize("role", ["q", "k", "v", "o"])
@pytest.mark.parametrize("method,group,adaptive", [("turboboa", -1, None), ("turboboa", 8, None), ("boa", -1, None),
                                                   ("boa", 8, None), ("boa", 8, True), ("turboboa", 8, False),
                                                   ("gptq", -1, None)])
def test_method_runs_the_reference_algorithm(method, group, adaptive, role):
    cfg = QuantConfig(method=method, bits=2, group_size=group, rows=4, adaptive_grid=adaptive)
    w = torch.randn(out_features(role), D_IN, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    stats = Statistics()
    got, loss = get_method(method).quantize(role, w, stats, cfg, SHAPE)
    codes, scale, zero = (t.reshape(len(w), -1) for t in expected(role, w, cfg, stats))
    assert torch.equal(got.codes, codes) and torch.equal(got.zero, zero)
    assert float((got.scale - scale).abs().max() / scale.abs().max()) < TOL
    assert loss >= 0
