"""Perplexity of an exported checkpoint as vLLM computes it (prompt log-probs) beside tbq's own PyTorch
evaluation of the run, on the same held-out windows (the export check of issue 4).

    python -m tbq_eval.vllm_ppl EXPORT RUN [--vllm-python PY] [--seqlen 1024] [--windows 4] [--dataset exl2-wiki]
                                  [--dtype auto]

PY is a Python with vLLM (default: $TBQ_VLLM_PYTHON); on a GPU machine use the GPU bundle's python3.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from turboboa_export.errors import TbqError
from turboboa_export.pipeline.sequential import pick_device

from .ppl import (default_vllm_python, eval_windows, load_for_eval, perplexity, report_result, serving_dtype,
                  vllm_perplexity)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export")
    ap.add_argument("run")
    ap.add_argument("--vllm-python", default=default_vllm_python())
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=4, help="how many windows (default 4; 0 = all)")
    ap.add_argument("--dataset", default="exl2-wiki")
    ap.add_argument("--device", default="auto", help="device of the PyTorch evaluation")
    ap.add_argument("--dtype", default="auto", help="vLLM's activation dtype (auto: the export's, per family)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    try:
        model, tok = load_for_eval(a.run)
        ws = eval_windows(tok, a.dataset, a.seqlen, a.windows or None)
        result = {"export": a.export, "run": a.run, "windows": int(ws.shape[0]), "tokens": int(ws.numel()),
                  "dtype": serving_dtype(a.export, a.dtype),
                  "vllm_ppl": vllm_perplexity(a.export, ws, a.vllm_python, a.dtype),
                  "tbq_ppl": perplexity(model, ws, pick_device(a.device), progress=False)}
    except TbqError as e:
        raise SystemExit(f"error: {e}") from None
    result["relative_difference"] = abs(result["vllm_ppl"] / result["tbq_ppl"] - 1)
    report_result(result, a.json)
    return result


if __name__ == "__main__":
    main()
