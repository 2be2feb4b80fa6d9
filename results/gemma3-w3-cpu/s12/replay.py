"""Offline replay of block 0's q_proj (or k_proj) turboboa_two_sided on the dumped, bitwise thread-independent
inputs (runs/base_t1.calls.pt), with 1 and 2 intra-op threads in one process, instrumented per row block:
first row block whose grid (scales), codes, or compensated weights differ. Also per-variant (percdamp_out x M,
refine 0) share of differing codes.
usage: python replay.py [q|k]"""
import dataclasses, sys, torch
from turboboa_export.algorithms import turboboa as tb
from turboboa_export.algorithms.grid import GridSpec, dequantize, find_params_2d
from turboboa_export.algorithms.gptq import column_pass, damp, fill_dead, inverse_cholesky_upper, prepare_columns
from turboboa_export.algorithms.turboboa import TurboBoAOptions, row_compensation, flat_rows, _permute_rows

role = sys.argv[1] if len(sys.argv) > 1 else "q"
calls = torch.load("/tmp/hout/runs/base_t1.calls.pt", weights_only=False)
c = [x for x in calls if x["role"] == role][0]
spec = GridSpec(3, False, "hessian")
o = {k: v for k, v in c["opts"].items()}
opts0 = TurboBoAOptions(**o)

def traced(w, h_in, h_out, opts):
    """turboboa_two_sided's row loop (no act-order, r None at block 0), returning per row block (params, codes,
    current) for comparison; same operations as turboboa.py."""
    heads, rows, cols = w.shape
    flat, h_in, _, _ = prepare_columns(w.reshape(-1, cols), h_in, None, False)
    w = flat.reshape(heads, rows, cols)
    h_out = fill_dead(h_out)
    u_in = inverse_cholesky_upper(h_in, opts.percdamp)
    u_out = inverse_cholesky_upper(h_out, opts.percdamp_out)
    h_grid = damp(h_in, opts.percdamp)
    current = w.clone(); trace = []
    for r1 in range(0, rows, opts.rows):
        r2 = min(r1 + opts.rows, rows)
        wb = current[:, r1:r2, :].clone()
        params = find_params_2d(flat_rows(wb), spec, -1, h_grid)
        cc, s, z = column_pass(flat_rows(wb), u_in, spec, -1, h_grid, params, None)
        cc, s, z = (t.reshape(heads, r2 - r1, -1) for t in (cc, s, z))
        if r2 < rows:
            err = wb - dequantize(cc, s, z)
            current[:, r2:] -= row_compensation(u_out, r1, r2) @ err
        trace.append((wb, s, cc))
    return trace, u_in, u_out

w, h_in, h_out = c["w"], c["h_in"], c["h_out"]
res = {}
for t in (1, 2):
    torch.set_num_threads(t)
    res[t] = traced(w, h_in, h_out, opts0)
(tr1, ui1, uo1), (tr2, ui2, uo2) = res[1], res[2]
print(f"{role}: u_in equal {torch.equal(ui1, ui2)}, u_out equal {torch.equal(uo1, uo2)}")
for b, ((wa, sa, ca), (wb_, sb, cb)) in enumerate(zip(tr1, tr2)):
    dw = float((wa - wb_).abs().max() / wa.abs().max())
    ds = float(((sa - sb).abs() / sa).max())
    dc = float((ca != cb).double().mean())
    print(f"row block {b:2d}: input W rel diff {dw:.1e}  scale rel diff {ds:.1e}  codes differ {100*dc:.2f}%")
    if b > 4 and dc == 0 and dw == 0 and b < len(tr1) - 1:
        continue

# which op first differs: the grid search on identical input of the first block with a difference?
torch.set_num_threads(1)
