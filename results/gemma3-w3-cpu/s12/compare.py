"""Share of differing codes (and max rel scale diff) of block 0/1 q/k/v between two runs, on one line
(s11/compare_threads.py's differences()).
usage: python compare.py RUN_A RUN_B"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "s11"))
from compare_threads import differences  # noqa: E402

rows = differences(sys.argv[1], sys.argv[2], ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"))
print(" | ".join(f"{blk}.{lin.split('.')[-1]} codes_diff {100 * codes:.2f}% scale_rel {rel:.1e}"
                 for blk, lin, rel, codes in rows))
