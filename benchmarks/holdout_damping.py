"""Issue 20: held-out block-output error of SmolLM2-135M's first block(s), fixed damping against damping that scales
with the token count (``--sample-damp``), on CPU.

Each method quantizes the first ``--blocks`` blocks of smollm2-135m (a truncated copy, built once) calibrated on
``--windows`` x ``--seqlen`` tokens of exl2-wiki, with ``--heldout`` more windows held out; the last block's
output error on the calibrating and on the held-out windows comes from the run's metrics.jsonl. Prints a markdown
table.

    python benchmarks/holdout_damping.py [--windows 8 --seqlen 256 --heldout 16 --bits 3 --blocks 1
                                          --methods rtn,gptq,boa,turboboa]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

METHODS = ("rtn", "gptq", "boa", "turboboa")
SAMPLE_DAMPS = (0.0, 0.25)


def metrics_block_errors(run: Path) -> tuple[float, float]:
    """(calibration, held-out) output error of the run's last block."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = max(r["block"] for r in rows)
    row = next(r for r in rows if r["block"] == last)
    return row["block_output_rel_error"], row["block_output_rel_error_heldout"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=8, help="calibrating windows")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--heldout", type=int, default=16, help="held-out windows")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of " + ", ".join(METHODS))
    args = ap.parse_args(argv)
    from tbq_eval.block_error import first_blocks
    from turboboa_export.config import build_config
    from turboboa_export.pipeline.sequential import quantize_model

    with tempfile.TemporaryDirectory(prefix="tbq-holdout-") as tmp:
        model = first_blocks("smollm2-135m", args.blocks, Path(tmp))
        calib = {"dataset": "exl2-wiki", "nsamples": args.windows + args.heldout, "seqlen": args.seqlen,
                 "holdout": args.heldout}
        print(f"SmolLM2-135M, last of {args.blocks} block(s), W{args.bits} per-channel asym, "
              f"{args.windows} x {args.seqlen} = {args.windows * args.seqlen} calibration tokens, {args.heldout} "
              "held-out windows")
        print("| method | sample_damp | calibration error | held-out error |\n|---|---|---|---|")
        overlap = None
        for method in args.methods.split(","):
            for sample_damp in SAMPLE_DAMPS if method != "rtn" else (0.0,):  # min-max RTN reads no damping
                cfg = build_config(str(model), quant={"method": method, "bits": args.bits, "sample_damp": sample_damp},
                                   calib=calib, device="cpu")
                run = quantize_model(cfg, Path(tmp) / f"{method}-{sample_damp}", progress=False)
                overlap = json.loads((run / "run.json").read_text())["calibration"]["heldout_tokens_in_calibration"]
                err, held = metrics_block_errors(run)
                print(f"| {method} | {sample_damp} | {err:.4f} | {held:.4f} |", flush=True)
        print(f"\nheld-out tokens also in calibrating windows: {overlap} of {args.heldout * args.seqlen}")


if __name__ == "__main__":
    main()
