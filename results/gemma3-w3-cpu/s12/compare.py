"""Share of differing codes (and max rel scale diff) of block 0/1 q/k/v between two runs.
usage: python compare.py RUN_A RUN_B"""
import glob, sys
from safetensors.torch import load_file
def load(d):
    t = {}
    for f in sorted(glob.glob(f"{d}/blocks/*.safetensors")):
        t.update(load_file(f))
    return t
a, b = load(sys.argv[1]), load(sys.argv[2])
out = []
for blk in (0, 1):
    for lin in ("q_proj", "k_proj", "v_proj"):
        k = f"model.layers.{blk}.self_attn.{lin}"
        x, y = a[k + ".scale"].double(), b[k + ".scale"].double()
        rel = float(((x - y).abs() / y.abs().clamp_min(1e-12)).max())
        codes = float((a[k + ".codes"] != b[k + ".codes"]).double().mean())
        out.append(f"{blk}.{lin} codes_diff {100*codes:.2f}% scale_rel {rel:.1e}")
print(" | ".join(out))
