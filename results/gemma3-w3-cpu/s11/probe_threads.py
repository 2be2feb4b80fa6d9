"""Quantize Gemma's first 2 blocks with the given settings; save the run under OUT (thread count from the env)."""
import json, sys
from pathlib import Path
from tbq_eval.block_error import first_blocks
from turboboa_export.config import build_config
from turboboa_export.pipeline.sequential import quantize_model
out = Path(sys.argv[1]); quant = json.loads(sys.argv[2])
model = Path("/tmp/e11/gemma2blocks")
if not model.exists():
    first_blocks("gemma3-270m", 2, Path("/tmp/e11/g2tmp")).rename(model)
cfg = build_config(str(model), quant={"bits": 3, **quant}, device="cpu",
                   calib={"dataset": "exl2-c4", "nsamples": 16, "seqlen": 256, "holdout": 0})
quantize_model(cfg, out, progress=False)
