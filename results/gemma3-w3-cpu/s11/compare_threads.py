"""Per linear of Gemma's first two blocks: the largest relative scale difference and the share of differing codes
between two runs of probe_threads.py (one with OMP_NUM_THREADS=1, one with 2). Session 11:
  OMP_NUM_THREADS=1 python probe_threads.py /tmp/e11/p_tb_t1 '{"method":"turboboa"}'   (and _t2 with 2 threads;
  p_r0_* with '{"method":"turboboa","refine_iters":0}'), then python compare_threads.py /tmp/e11/p_tb_t1 /tmp/e11/p_tb_t2
(session 12's s12/compare.py reuses differences() for q/k/v on one line)"""
import glob
import sys

from safetensors.torch import load_file

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


def load(d):
    t = {}
    for f in sorted(glob.glob(f"{d}/blocks/*.safetensors")):
        t.update(load_file(f))
    return t


def differences(run_a, run_b, linears=LINEARS):
    """(block, linear, max relative scale difference, share of differing codes) for blocks 0 and 1."""
    a, b = load(run_a), load(run_b)
    for blk in (0, 1):
        for lin in linears:
            k = f"model.layers.{blk}.{lin}"
            x, y = a[k + ".scale"].double(), b[k + ".scale"].double()
            rel = float(((x - y).abs() / y.abs().clamp_min(1e-12)).max())
            codes = float((a[k + ".codes"] != b[k + ".codes"]).double().mean())
            yield blk, lin, rel, codes


if __name__ == "__main__":
    for blk, lin, rel, codes in differences(sys.argv[1], sys.argv[2]):
        print(blk, lin, f"scale max rel diff {rel:.1e}", f"codes differing {codes:.4f}")
