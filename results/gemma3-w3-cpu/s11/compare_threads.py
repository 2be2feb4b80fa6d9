"""Per linear of Gemma's first two blocks: the largest relative scale difference and the share of differing codes
between two runs of probe_threads.py (one with OMP_NUM_THREADS=1, one with 2). Session 11:
  OMP_NUM_THREADS=1 python probe_threads.py /tmp/e11/p_tb_t1 '{"method":"turboboa"}'   (and _t2 with 2 threads;
  p_r0_* with '{"method":"turboboa","refine_iters":0}'), then python compare_threads.py /tmp/e11/p_tb_t1 /tmp/e11/p_tb_t2"""
import glob
import sys

from safetensors.torch import load_file


def load(d):
    t = {}
    for f in sorted(glob.glob(f"{d}/blocks/*.safetensors")):
        t.update(load_file(f))
    return t


a, b = load(sys.argv[1]), load(sys.argv[2])
for blk in (0, 1):
    for lin in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj"):
        k = f"model.layers.{blk}.{lin}"
        x, y = a[k + ".scale"].double(), b[k + ".scale"].double()
        rel = float(((x - y).abs() / y.abs().clamp_min(1e-12)).max())
        codes = float((a[k + ".codes"] != b[k + ".codes"]).double().mean())
        print(blk, lin, f"scale max rel diff {rel:.1e}", f"codes differing {codes:.4f}")
