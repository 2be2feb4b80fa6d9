"""vLLM serving speed, side by side in one run: decode output tok/s at several batch sizes and prefill prompt tok/s.

    python benchmarks/int_act_serving.py [--set int_act|decode] [--shape llama3-8b] [--batch-sizes 1,16,128]
        [--prefill 8x2048] [--only LABEL,...] [--vllm-python python3] [--ckpts /tmp/intck] --json OUT.json

``--set int_act`` (issue 15): W4A4 and W4A8 exports (tbq's plugin) against fp16, stock W8A8-int8 (CUTLASS), W4A16
on Marlin and on tbq's decode kernel. ``--set decode`` (issue 17): W4/W3/W2 g128 on tbq's decode kernel against
the stock kernel vLLM picks without it (Marlin for W4, Humming for W3/W2), with fp16 first.

Weights are random (speed does not depend on their values): each checkpoint is written with one layer for its
config.json and served at the shape's full depth with vLLM's dummy loader (vLLM draws every tensor, integer codes
included, and reads no weight file), so no 16 GB fp16 file is written. W4A8/W4A4 checkpoints carry the full online down_proj
Hadamard a ``tbq quantize --rotate hadamard --act-bits 4|8`` export has; W4A16 g128 is served with Machete disabled
(VLLM_DISABLED_KERNELS=MacheteLinearKernel) so that vLLM picks Marlin. The vLLM Python must find tbq's plugin.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tbq_eval import throughput  # noqa: E402
from tbq_eval.random_checkpoint import shape_config, write_random  # noqa: E402

# label -> (write_random keyword arguments, VLLM_DISABLED_KERNELS)
INT_ACT = {
    "fp16": (dict(fmt="fp16"), None),
    "W8A8-int8 (stock)": (dict(fmt="w8a8"), None),
    "W4A16 g128 Marlin": (dict(fmt="vllm", bits=4, group_size=128), "TbqDequantLinearKernel,MacheteLinearKernel"),
    "W4A16 g128 (tbq decode)": (dict(fmt="vllm", bits=4, group_size=128), None),
    "W4A8 channel (tbq)": (dict(fmt="vllm", bits=4, group_size=-1, online_rotation="full", act_bits=8), None),
    "W4A4 channel (tbq)": (dict(fmt="vllm", bits=4, group_size=-1, online_rotation="full", act_bits=4), None),
    "W4A4 g128 (tbq)": (dict(fmt="vllm", bits=4, group_size=128, online_rotation="full", act_bits=4), None),
}
STOCK = "TbqDequantLinearKernel,MacheteLinearKernel"  # vLLM without tbq's kernel, Marlin ahead of Machete
DECODE = {"fp16": (dict(fmt="fp16"), None)} | {
    f"W{bits} g128 {kernel}": (dict(fmt="vllm", bits=bits, group_size=128), disabled)
    for bits in (4, 3, 2) for kernel, disabled in (("stock", STOCK), ("tbq", None))}
SETS = {"int_act": INT_ACT, "decode": DECODE}


def decode_criteria(rows: list[dict]) -> list[str]:
    """Issue 17's serving targets: batch-1 tok/s and batch 16 ahead of the stock kernel, per width."""
    tok = {(r["label"], r["batch"]): r["output_tok_s"] for r in rows if "output_tok_s" in r}
    checks = []
    for bits, target in ((4, 500), (3, 600), (2, 700)):
        b1 = tok.get((f"W{bits} g128 tbq", 1))
        if b1:
            checks.append(f"W{bits} batch 1: {b1:.0f} tok/s (>= {target}) {'PASS' if b1 >= target else 'FAIL'}")
        ours, stock = tok.get((f"W{bits} g128 tbq", 16)), tok.get((f"W{bits} g128 stock", 16))
        if ours and stock:
            checks.append(f"W{bits} batch 16 vs stock: {ours / stock:.2f}x (> 1) {'PASS' if ours > stock else 'FAIL'}")
    return checks


def criteria(rows: list[dict]) -> list[str]:
    """Issue 15's targets, each as 'name: ratio (target) PASS|FAIL'."""
    tok = {(r["label"], r["batch"] if "output_tok_s" in r else "prefill"): r.get("output_tok_s", r.get("prefill_tok_s"))
           for r in rows}
    pre = lambda label: tok.get((label, "prefill"))  # noqa: E731
    checks = []
    for w4a4 in ("W4A4 channel (tbq)", "W4A4 g128 (tbq)"):
        for name, got, base, target in (
                ("prefill vs fp16", pre(w4a4), pre("fp16"), 1.8),
                ("prefill vs W8A8", pre(w4a4), pre("W8A8-int8 (stock)"), 1.0),
                ("decode b1 vs W4A16 Marlin", tok.get((w4a4, 1)), tok.get(("W4A16 g128 Marlin", 1)), 1.0),
                ("decode b128 vs fp16", tok.get((w4a4, 128)), tok.get(("fp16", 128)), 1.2)):
            if got and base:
                checks.append(f"{w4a4} {name}: {got / base:.2f}x (>= {target}) {'PASS' if got / base >= target else 'FAIL'}")
    return checks


def checkpoint_name(shape: str, label: str) -> str:
    """The folder a row's random checkpoint is written to and reused from, named after the shape and the row (a
    name by position let a later ``--only`` subset reuse another row's checkpoint)."""
    return f"{shape}-" + re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=tuple(SETS), default="int_act")
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--batch-sizes", default="1,16,128")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--prefill", default="8x2048")
    ap.add_argument("--only", help="comma-separated labels to run (default all)")
    ap.add_argument("--vllm-python", default=sys.executable)
    ap.add_argument("--ckpts", type=Path, default=Path("/tmp/intck"))
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args(argv)
    chosen = {k: v for k, v in SETS[a.set].items() if not a.only or k in a.only.split(",")}
    paths = []
    for label, (kwargs, _) in chosen.items():
        path = a.ckpts / checkpoint_name(a.shape, label)
        if not (path / "config.json").is_file():
            write_random(a.shape, path, layers=1, seed=0, **kwargs)
            config = json.loads((path / "config.json").read_text())
            config["num_hidden_layers"] = shape_config(a.shape).num_hidden_layers
            (path / "config.json").write_text(json.dumps(config, indent=2))
        paths.append(str(path))
    rows = throughput.offline(paths, list(chosen), [int(b) for b in a.batch_sizes.split(",")], a.input_len,
                              a.output_len, a.vllm_python, disabled_kernels=[v[1] for v in chosen.values()],
                              prefill=a.prefill, load_format="dummy")
    print(throughput.offline_table(rows))
    checks = criteria(rows) if a.set == "int_act" else decode_criteria(rows)
    print("\n".join(checks))
    a.json.write_text(json.dumps({"rows": rows, "criteria": checks}, indent=2))
    return rows


if __name__ == "__main__":
    main()
