"""Perplexity of an exported checkpoint as vLLM computes it (prompt log-probs) beside tbq's own PyTorch
evaluation of the run, on the same held-out windows.

    python -m eval.vllm_ppl EXPORT RUN [--vllm-python PY] [--seqlen 1024] [--windows 4] [--dataset exl2-wiki]

PY is a Python with vLLM (default: $TBQ_VLLM_PYTHON); on a GPU machine use the GPU bundle's python3.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from turboboa_export.calibration import load_text, tokenize

from .ppl import load_for_eval, perplexity, windows

SCRIPT = Path(__file__).with_name("vllm_logprobs.py")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export")
    ap.add_argument("run")
    ap.add_argument("--vllm-python", default=os.environ.get("TBQ_VLLM_PYTHON", "python3"))
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--dataset", default="exl2-wiki")
    a = ap.parse_args(argv)
    model, tok = load_for_eval(a.run)
    ws = windows(tokenize(tok, load_text(a.dataset, "test")), a.seqlen)[: a.windows]
    with tempfile.TemporaryDirectory() as tmp:
        prompts, out = Path(tmp) / "prompts.json", Path(tmp) / "out.json"
        prompts.write_text(json.dumps(ws.tolist()))
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
        subprocess.run([a.vllm_python, str(SCRIPT), a.export, str(prompts), str(out), "--max-tokens", "1",
                        "--max-model-len", str(a.seqlen + 16)], check=True, env=env)
        got = json.loads(out.read_text())
    vllm_nll = -sum(sum(o["prompt_logprobs"]) for o in got) / sum(len(o["prompt_logprobs"]) for o in got)
    result = {"export": a.export, "run": a.run, "tokens": int(ws.numel()), "vllm_ppl": math.exp(vllm_nll),
              "tbq_ppl": perplexity(model, ws.reshape(-1), a.seqlen, torch.device("cpu"), progress=False)}
    result["relative_difference"] = abs(result["vllm_ppl"] / result["tbq_ppl"] - 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
