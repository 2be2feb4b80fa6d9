"""One setting, one thread count: quantize gemma3-270m's first 2 blocks (W3 per channel, exl2-c4 16 x 256, seed 0,
as benchmarks/heldout_variants.py and s11/probe_threads.py), optionally multiplying the relative H_out damping of
q and/or k (monkeypatch of methods.turboboa_two_sided; no tracked file edited), then the held-out block-1 error on
32 exl2-wiki test windows of 128 (same measure as heldout_variants.py). Also dumps the two-sided calls' inputs.
usage: OMP_NUM_THREADS=T python run_setting.py THREADS OUTDIR '{"method":"turboboa"}' '{"q":10,"k":1}'"""
import dataclasses, json, sys
from pathlib import Path
import torch

threads, out, quant, mult = int(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
torch.set_num_threads(threads)
from turboboa_export import methods
from turboboa_export.config import build_config
from turboboa_export.models import load_tokenizer
from turboboa_export.pipeline.sequential import quantize_model
from tbq_eval.block_error import first_blocks, last_block_errors
from tbq_eval.ppl import eval_windows

calls = []
orig = methods.turboboa_two_sided
def patched(w, h_in, h_out, spec, group_size, r, opts):
    role = "q" if h_out.shape[0] == 4 else "k"  # gemma3-270m: 4 q heads, 1 kv head
    base = opts.percdamp_out
    opts = dataclasses.replace(opts, percdamp_out=base * mult.get(role, 1))
    calls.append(dict(role=role, w=w.clone(), h_in=h_in.clone(), h_out=h_out.clone(),
                      r=None if r is None else r.clone(), opts=dataclasses.asdict(opts), base_out=base,
                      group_size=group_size))
    print(f"{role}: percdamp_in {opts.percdamp:.5g} percdamp_out {base:.5g} -> {opts.percdamp_out:.5g}", flush=True)
    return orig(w, h_in, h_out, spec, group_size, r, opts)
methods.turboboa_two_sided = patched
if mult.get("f64"):  # U = upper Cholesky of H^-1 computed in float64, cast back (every GPTQ/TurboBoA factorization)
    from turboboa_export.algorithms import gptq as _g, turboboa as _t
    _icu = _g.inverse_cholesky_upper
    def icu64(h, percdamp):
        return _icu(h.double(), percdamp).to(h.dtype)
    _g.inverse_cholesky_upper = _t.inverse_cholesky_upper = icu64
orig1 = methods.turboboa_one_sided
def patched1(w, h_in, spec, group_size, r, opts):
    if w.dim() == 3:  # v: one attention-weighted H_v per kv head
        calls.append(dict(role="v", w=w.clone(), h_in=h_in.clone(), opts=dataclasses.asdict(opts)))
    return orig1(w, h_in, spec, group_size, r, opts)
methods.turboboa_one_sided = patched1

model = Path("/tmp/hout/gemma3-270m-2blocks")
if not model.exists():
    first_blocks("gemma3-270m", 2, Path("/tmp/hout"))
windows = eval_windows(load_tokenizer(str(model)), "exl2-wiki", 128, 32)
cfg = build_config(str(model), quant={"bits": 3, **quant}, device="cpu",
                   calib={"dataset": "exl2-c4", "nsamples": 16, "seqlen": 256, "holdout": 0})
run = quantize_model(cfg, out, progress=False)
err = last_block_errors(model, {"run": run}, windows)["run"]
torch.save(calls, out.parent / (out.name + ".calls.pt"))
torch.save(err, out.parent / (out.name + ".err.pt"))
print(f"RESULT threads={threads} quant={json.dumps(quant)} mult={json.dumps(mult)} heldout_err={float(err.mean()):.5f}")
