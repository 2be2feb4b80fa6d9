"""The evaluation protocol of algorithm.md section 8 for a list of methods and bit widths: quantize, then
held-out perplexity of each run (and of the unquantized model). Appends one JSON line per run.

    python -m eval.protocol --model smollm2-135m --runs rtn:w3,gptq:w3,turboboa:w3 --out results/
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from turboboa_export.calibration import load_text, tokenize
from turboboa_export.config import PRESETS, build_config
from turboboa_export.pipeline.sequential import pick_device, quantize_model

from .ppl import load_for_eval, perplexity


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--runs", required=True, help="METHOD:PRESET pairs, e.g. turboboa:w3,gptq:w2")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fp", action="store_true", help="also evaluate the unquantized model")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    device = pick_device(a.device)
    log = a.out / "results.jsonl"
    ids = None

    def record(row: dict) -> None:
        print(json.dumps(row), flush=True)
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")

    def ppl_of(target: str) -> float:
        nonlocal ids
        model, tok = load_for_eval(target)
        if ids is None:
            ids = tokenize(tok, load_text("exl2-wiki", "test"))
        return perplexity(model, ids, 2048, device, progress=False)

    if a.fp:
        record({"run": "fp", "ppl": ppl_of(a.model)})
    for item in a.runs.split(","):
        method, preset = item.split(":")
        cfg = build_config(a.model, preset=preset, quant={"method": method},
                           calib={"dataset": "exl2-wiki", "nsamples": a.nsamples, "seqlen": a.seqlen, "seed": 0},
                           device=str(device))
        run_dir = a.out / f"{method}-{preset}"
        t0 = time.time()
        quantize_model(cfg, run_dir, overwrite=True, progress=False)
        wall = time.time() - t0
        info = json.loads((run_dir / "run.json").read_text())
        record({"run": f"{method}-{preset}", "method": method, "preset": preset, **PRESETS[preset],
                "ppl": ppl_of(str(run_dir)), "quantize_s": info["timings"]["quantize_seconds"], "wall_s": wall})


if __name__ == "__main__":
    main()
