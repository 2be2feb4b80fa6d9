"""Issue 20: held-out block-output error of a model's first block(s) under several quantization settings, on CPU.

Each setting (a JSON object of ``quant`` settings, per-layer ``rules`` included) quantizes the first ``--blocks``
blocks of MODEL calibrated on ``--windows`` x ``--seqlen`` tokens of ``--dataset``; the last block's output error
against full precision is measured window by window on ``--heldout`` windows of the exl2-wiki test split
(``tbq_eval.block_error``). Prints one line per setting: the mean error and, against the first setting, the mean
paired difference with its standard error.

    python benchmarks/heldout_variants.py gemma3-270m '[{"method": "gptq"}, {"method": "turboboa"},
        {"method": "turboboa", "rules": [{"pattern": "re:.*v_proj$", "method": "gptq"}]}]'
        [--blocks 1 --bits 3 --dataset exl2-c4 --windows 16 --seqlen 256 --heldout 32 --heldout-seqlen 128]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="built-in name or model folder")
    ap.add_argument("settings", help="JSON list of quant-setting objects")
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--dataset", default="exl2-c4", help="calibration text")
    ap.add_argument("--windows", type=int, default=16, help="calibrating windows")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--heldout", type=int, default=32, help="held-out exl2-wiki test windows")
    ap.add_argument("--heldout-seqlen", type=int, default=128)
    args = ap.parse_args(argv)
    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: settings are not JSON ({e}); pass a list like '[{{\"method\": \"gptq\"}}]'")
    if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings) or not settings:
        raise SystemExit("error: settings must be a non-empty JSON list of objects, e.g. '[{\"method\": \"gptq\"}]'")
    from tbq_eval.block_error import first_blocks, last_block_errors
    from tbq_eval.ppl import eval_windows
    from turboboa_export.config import build_config
    from turboboa_export.models import load_tokenizer
    from turboboa_export.pipeline.sequential import quantize_model

    with tempfile.TemporaryDirectory(prefix="tbq-variants-") as tmp:
        model = first_blocks(args.model, args.blocks, Path(tmp))
        windows = eval_windows(load_tokenizer(str(model)), "exl2-wiki", args.heldout_seqlen, args.heldout)
        print(f"{args.model}, last of {args.blocks} block(s), W{args.bits}, {args.windows} x {args.seqlen} tokens of "
              f"{args.dataset}; held out: {len(windows)} exl2-wiki test windows of {args.heldout_seqlen}")
        first = None
        for i, setting in enumerate(settings):
            cfg = build_config(str(model), quant={"bits": args.bits, **setting}, device="cpu",
                               calib={"dataset": args.dataset, "nsamples": args.windows, "seqlen": args.seqlen,
                                      "holdout": 0})
            err = last_block_errors(model, {"run": quantize_model(cfg, Path(tmp) / f"run{i}", progress=False)},
                                    windows)["run"]
            first = err if first is None else first
            d = err - first
            print(f"{json.dumps(setting)}: {float(err.mean()):.5f} (against the first: {float(d.mean()):+.5f} "
                  f"± {float(d.std() / len(d) ** 0.5) if i else 0.0:.5f})", flush=True)


if __name__ == "__main__":
    main()
