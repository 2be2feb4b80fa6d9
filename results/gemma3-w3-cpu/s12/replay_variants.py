"""Offline: block 0 q_proj / k_proj turboboa_two_sided on the dumped (thread-independent) inputs, 1 vs 2 threads,
per variant: share of differing codes and the two-sided loss tr(H_out dW H_in dW^T) of each thread count.
Variants: H_out relative damping x M; 'f64chol': U_in/U_out from float64 Cholesky (cast back to float32).
usage: python replay_variants.py"""
import dataclasses, torch
from turboboa_export.algorithms import turboboa as tb
from turboboa_export.algorithms import gptq
from turboboa_export.algorithms.grid import GridSpec
from turboboa_export.methods import _two_sided_loss

calls = torch.load("/tmp/hout/runs/base_t1.calls.pt", weights_only=False)
spec = GridSpec(3, False, "hessian")
orig_icu = gptq.inverse_cholesky_upper
def icu64(h, percdamp):
    return orig_icu(h.double(), percdamp).to(h.dtype)

def run(c, mult, f64, refine=None):
    o = dict(c["opts"]); o["percdamp_out"] = c["base_out"] * mult
    if refine is not None: o["refine_iters"] = refine
    opts = tb.TurboBoAOptions(**o)
    tb.inverse_cholesky_upper = icu64 if f64 else orig_icu
    out = {}
    for t in (1, 2):
        torch.set_num_threads(t)
        q = tb.turboboa_two_sided(c["w"], c["h_in"], c["h_out"], spec, -1, None, opts)
        out[t] = q
    tb.inverse_cholesky_upper = orig_icu
    d = float((out[1].codes != out[2].codes).double().mean())
    w = c["w"].reshape(-1, c["w"].shape[-1])
    l = [_two_sided_loss(w, out[t].dequantize(), c["h_in"].double(), c["h_out"].double()) for t in (1, 2)]
    return d, l

for role in ("q", "k"):
    c = [x for x in calls if x["role"] == role][0]
    for f64 in (False, True):
        for mult in (1, 10, 100):
            d, l = run(c, mult, f64)
            print(f"block0 {role} percdamp_out x{mult:<3} ({c['base_out']*mult:.4g}) f64chol={f64!s:5}: "
                  f"codes differ {100*d:5.2f}%  loss t1 {l[0]:.4e} t2 {l[1]:.4e}", flush=True)
