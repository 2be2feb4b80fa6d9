"""Offline: block 0 q_proj, 1 vs 2 threads, with only U_in or only U_out factored in float64 (the other float32):
which factorization's thread-dependence starts the divergence. usage: python replay_which_u.py"""
import torch
from turboboa_export.algorithms import turboboa as tb
from turboboa_export.algorithms.grid import GridSpec
calls = torch.load("/tmp/hout/runs/base_t1.calls.pt", weights_only=False)
c = [x for x in calls if x["role"] == "q"][0]
o = dict(c["opts"]); opts = tb.TurboBoAOptions(**o)
orig = tb.inverse_cholesky_upper
for which in ("in", "out"):
    def icu(h, pd, n=[0]):
        n[0] += 1  # first call: H_in, second: H_out (turboboa.py:73-74)
        f64 = (n[0] % 2 == 1) == (which == "in")
        return orig(h.double(), pd).to(h.dtype) if f64 else orig(h, pd)
    tb.inverse_cholesky_upper = icu
    out = {}
    for t in (1, 2):
        torch.set_num_threads(t)
        out[t] = tb.turboboa_two_sided(c["w"], c["h_in"], c["h_out"], GridSpec(3, False, "hessian"), -1, None, opts)
    print(f"only U_{which} in float64: block0 q codes differ {100*float((out[1].codes != out[2].codes).double().mean()):.2f}%")
