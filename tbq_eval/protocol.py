"""The evaluation protocol of algorithm.md section 8 for a list of methods and bit widths: quantize, then
held-out perplexity of each run (and of the unquantized model), with ``--c4`` also on the bundled C4 text
(never used for calibration). Appends one JSON line per run to OUT/results.jsonl.

    python -m tbq_eval.protocol --model smollm2-135m --runs rtn:w3,gptq:w3,turboboa:w3-g64 --out results/ [--fp] [--c4]
        [--calib-dataset exl2-c4 --nsamples 16 --seqlen 512]   (issue 20's small-calibration table)

A run is METHOD:PRESET, optionally followed by ``:rot`` (Hadamard rotation; ``:blockB`` makes its online part
block-diagonal, ``--online-rotation block:B``), ``:a4`` / ``:a8`` (per-token activation bits) and ``:kv4`` / ``:kv8``
(KV-cache bits), e.g. ``turboboa:w4:rot:a4:kv4`` for rotated W4A4KV4, ``turboboa:w4:rot:block512:a4``; ``:adaptive``
/ ``:fixed`` set ``adaptive_grid`` (``boa:w3:adaptive``: BoA with each row's grid from its compensated weights) and
``:centred`` sets ``centred_keys`` (q's H_out from the attention-centred key covariance), and the JSON line records
them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from turboboa_export.config import PRESETS, build_config
from turboboa_export.pipeline.sequential import pick_device, quantize_model

from .ppl import eval_windows, load_for_eval, perplexity, torch_dtype


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--runs", required=True,
                    help="METHOD:PRESET[:rot][:a4|:a8][:kv4|:kv8][:adaptive|:fixed][:centred] items, e.g. "
                         "gptq:w4:rot:a4, boa:w3:adaptive (adaptive/fixed: the grid of each row block from its current "
                         "or its original weights; centred: q's H_out from the attention-centred key covariance)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--nsamples", type=int, default=128, help="calibrating windows")
    ap.add_argument("--holdout", type=int, default=2, help="held-out windows drawn after the calibrating ones (the "
                                                          "calibrating windows stay those of section 8 with --seed 0)")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0, help="calibration seed: which windows calibrate (section 8: 0)")
    ap.add_argument("--calib-dataset", default="exl2-wiki", help="calibration text (section 8: exl2-wiki's first 80%%; "
                                                                    "exl2-c4 or a text file for other tables)")
    ap.add_argument("--eval-dataset", default="exl2-wiki", help="perplexity text (its held-out split)")
    ap.add_argument("--eval-seqlen", type=int, default=2048, help="perplexity window length")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="evaluation dtype (auto: each model's own)")
    ap.add_argument("--fp", action="store_true", help="also evaluate the unquantized model")
    ap.add_argument("--c4", action="store_true", help="also perplexity on the bundled C4 text (exl2-c4)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    device = pick_device(a.device)
    log = a.out / "results.jsonl"
    texts = {"ppl": a.eval_dataset} | ({"c4_ppl": "exl2-c4"} if a.c4 else {})
    cached: dict = {}

    def record(row: dict) -> None:
        print(json.dumps(row), flush=True)
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")

    def ppl_of(target: str) -> dict[str, float]:
        model, tok = load_for_eval(target, torch_dtype(a.dtype))
        for key, dataset in texts.items():
            if key not in cached:
                cached[key] = eval_windows(tok, dataset, a.eval_seqlen)
        return {key: perplexity(model, cached[key], device, progress=False) for key in texts}

    if a.fp:
        record({"run": "fp", "method": "fp", "bits": 32, **ppl_of(a.model)})
    items = a.runs.split(",")
    for n, item in enumerate(items, 1):
        method, preset, extra, transform, settings = parse_run(item)
        print(f"[{n}/{len(items)}] {item}: quantizing", flush=True)
        cfg = build_config(a.model, preset=preset, quant={"method": method, **settings}, transform=transform,
                           calib={"dataset": a.calib_dataset, "nsamples": a.nsamples + a.holdout, "holdout": a.holdout,
                                  "seqlen": a.seqlen, "seed": a.seed},
                           device=str(device))
        name = "-".join([method, preset, *extra])
        run_dir = a.out / name
        t0 = time.time()
        quantize_model(cfg, run_dir, overwrite=True, progress=False)
        wall = time.time() - t0
        info = json.loads((run_dir / "run.json").read_text())
        record({"run": name, "method": method, "preset": preset, "group_size": -1, **PRESETS[preset], **transform, **settings,
                "calib": f"{a.calib_dataset} {a.nsamples}x{a.seqlen}", "seed": a.seed,
                **ppl_of(str(run_dir)), "quantize_s": info["timings"]["quantize_seconds"], "wall_s": wall})


def parse_run(item: str) -> tuple[str, str, list[str], dict, dict]:
    """METHOD:PRESET[:suffixes] -> (method, preset, suffixes, transform settings, quant settings: {} or with
    "adaptive_grid": bool and/or "centred_keys": True). A malformed item, or a grid or centred suffix on a method
    other than boa/turboboa, is a SystemExit."""
    parts = item.split(":")
    blocks = [e for e in parts[2:] if e.startswith("block") and e[5:].isdigit()]
    if len(parts) < 2 or not parts[1] or set(parts[2:]) - {"rot", "a4", "a8", "kv4", "kv8", "adaptive", "fixed",
                                                           "centred", *blocks}:
        raise SystemExit(f"error: run {item!r} is not METHOD:PRESET[:rot[:blockB]][:a4|:a8][:kv4|:kv8]"
                         "[:adaptive|:fixed][:centred] (e.g. turboboa:w4:rot:a4:kv4, boa:w3:adaptive)")
    method, preset, *extra = parts
    grids = {"adaptive", "fixed"} & set(extra)
    if grids and (method not in ("boa", "turboboa") or len(grids) > 1):
        raise SystemExit(f"error: run {item!r}: :adaptive or :fixed (one of them) sets the row-block grid of boa and "
                         "turboboa only; drop it")
    if "centred" in extra and method not in ("boa", "turboboa"):
        raise SystemExit(f"error: run {item!r}: :centred sets q's H_out of boa and turboboa only; drop it")
    transform = {"rotate": "hadamard" if "rot" in extra else "none",
                 "online_rotation": f"block:{blocks[0][5:]}" if blocks else None,
                 "act_bits": next((int(e[1:]) for e in extra if e in ("a4", "a8")), None),
                 "kv_bits": next((int(e[2:]) for e in extra if e in ("kv4", "kv8")), None)}
    quant = {"adaptive_grid": "adaptive" in grids} if grids else {}
    return method, preset, extra, transform, quant | ({"centred_keys": True} if "centred" in extra else {})


if __name__ == "__main__":
    main()
