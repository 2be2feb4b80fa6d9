"""Block-0 conditioning (float64) of H_in / H_out (q, k) and H_v (v) from a run's dumped calls, before and after
the damping the run used (methods.damping: damp + sample_damp*d/T of mean diag), and how the t1/t2 dumps differ.
usage: python condition.py /tmp/hout/runs/base_t1.calls.pt /tmp/hout/runs/base_t2.calls.pt"""
import sys, torch
from turboboa_export.algorithms.gptq import damp, fill_dead
c1, c2 = torch.load(sys.argv[1], weights_only=False), torch.load(sys.argv[2], weights_only=False)
blk0 = {c["role"]: c for c in c1[:3]}
blk0b = {c["role"]: c for c in c2[:3]}
assert set(blk0) == {"q", "k", "v"}, [c["role"] for c in c1]

def report(name, h, pd):
    h = h.double()
    for i, hh in enumerate(h if h.dim() == 3 else h[None]):
        hh = fill_dead(hh)
        for tag, m in (("raw", hh), (f"damped {pd:.4g}", damp(hh, pd))):
            e = torch.linalg.eigvalsh(m)
            lmax, lmin = float(e[-1]), float(e[0])
            near6 = int((e >= lmax * (1 - 1e-6)).sum()); near4 = int((e >= lmax * (1 - 1e-4)).sum())
            # eigenvalues within 1e-6/1e-4 (relative) of the largest; and spectrum mass
            top = (e.flip(0)[:5] / lmax).tolist()
            n_small = int((e < lmax * 1e-6).sum())
            print(f"{name}[{i}] {tag:>14}: lmax {lmax:.3e} lmin {lmin:.3e} cond {lmax/max(lmin,1e-300):.3e} "
                  f"meandiag {float(hh.diagonal().mean()):.3e} #within1e-6 {near6} #within1e-4 {near4} "
                  f"#<1e-6*lmax {n_small} top5/lmax {[f'{t:.3g}' for t in top]}")

for role in ("q", "k"):
    c = blk0[role]; o = c["opts"]
    report(f"{role} H_in ", c["h_in"], o["percdamp"])
    report(f"{role} H_out", c["h_out"], o["base_out"] if "base_out" in o else c["base_out"])
report("v H_v  ", blk0["v"]["h_in"], blk0["v"]["opts"]["percdamp"])
print("t1 vs t2 dumped inputs (max rel diff):")
for role in ("q", "k", "v"):
    for key in ("h_in", "h_out", "w", "r"):
        a, b = blk0[role].get(key), blk0b[role].get(key)
        if a is None or b is None: continue
        print(f"  {role}.{key}: {float((a-b).abs().max() / a.abs().max()):.2e}")
