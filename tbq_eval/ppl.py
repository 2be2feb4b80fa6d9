"""Perplexity over non-overlapping windows of a held-out text (algorithm.md section 8), no BOS added.

    python -m tbq_eval.ppl TARGET [--dataset exl2-wiki|exl2-c4|FILE.txt|FILE.jsonl] [--seqlen 2048]
                       [--max-windows N] [--backend torch|vllm] [--vllm-python PY] [--dtype auto] [--json OUT]

TARGET, torch backend: a tbq run directory (its fake-quantized weights), a Hugging Face model folder or a
built-in name. vllm backend: a checkpoint vLLM serves (a `tbq export` folder or a model folder), scored from
vLLM's prompt log-probs; PY is a Python with vLLM (default $TBQ_VLLM_PYTHON, else this one). Every backend
tokenizes the same text with the target's tokenizer and scores the same windows, so the numbers compare.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from turboboa_export.arch import REGISTRY
from turboboa_export.calibration import load_text, tokenize
from turboboa_export.errors import TbqError
from turboboa_export.export.compressed_tensors import check_vllm_servable
from turboboa_export.models import load_model, resolve_model
from turboboa_export.pipeline.rundir import load_fake_quant_model
from turboboa_export.pipeline.sequential import pick_device
from turboboa_export.readers import read_json_object

LOGPROBS_SCRIPT = Path(__file__).with_name("vllm_logprobs.py")
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows [n, seqlen] (the ragged tail is dropped), the first ``max_windows`` if given."""
    n = ids.numel() // seqlen
    if n == 0:
        raise TbqError(f"the text has {ids.numel()} tokens, fewer than one window of {seqlen}; lower --seqlen")
    return ids[: n * seqlen].reshape(n, seqlen)[:max_windows]


def eval_windows(tokenizer, dataset: str, seqlen: int, max_windows: int | None = None,
                 split: str = "test") -> torch.Tensor:
    """The evaluation windows of a dataset name or local file, tokenized with ``tokenizer``."""
    return windows(tokenize(tokenizer, load_text(dataset, split)), seqlen, max_windows)


@torch.no_grad()
def perplexity(model, ws: torch.Tensor, device: torch.device, progress: bool = True) -> float:
    """exp(mean next-token NLL) over windows [n, seqlen], scored one window at a time."""
    model.to(device)
    nll, count = 0.0, 0
    for w in tqdm(ws, desc="ppl", disable=not progress):
        w = w.to(device)[None]
        logits = model(input_ids=w).logits[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits, w[0, 1:], reduction="sum"))
        count += w.shape[1] - 1
    return math.exp(nll / count)


def serving_dtype(checkpoint: str, dtype: str = "auto") -> str:
    """The activation dtype vLLM runs ``checkpoint`` in: ``dtype`` unless ``auto``; for ``auto`` the checkpoint's
    own fp16/bf16, and for a float32 checkpoint its family's half dtype (bfloat16 where float16 is unsafe, as
    ``tbq export`` picks it)."""
    if dtype != "auto":
        return dtype
    config = read_json_object(Path(checkpoint) / "config.json", "checkpoint config",
                              "pass a model or `tbq export` folder")
    own = config.get("dtype") or config.get("torch_dtype")
    if own in ("float16", "bfloat16"):
        return own
    spec = REGISTRY.get(config.get("model_type"))
    return spec.half_dtype if spec is not None else "float16"


def torch_dtype(dtype: str) -> torch.dtype | None:
    """The torch dtype named by ``--dtype`` for PyTorch evaluation; None for ``auto`` (the model's own)."""
    if dtype == "auto":
        return None
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise TbqError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return getattr(torch, dtype)


def vllm_prompt_logprobs(checkpoint: str, ws: torch.Tensor, vllm_python: str, dtype: str = "auto",
                         max_tokens: int = 1) -> list[dict]:
    """Per window, vLLM's log-prob of each token after the first (and its greedy continuation), computed in a
    separate Python that has vLLM."""
    with tempfile.TemporaryDirectory() as tmp:
        prompts, out = Path(tmp) / "prompts.json", Path(tmp) / "out.json"
        prompts.write_text(json.dumps(ws.tolist()))
        cmd = [vllm_python, str(LOGPROBS_SCRIPT), str(checkpoint), str(prompts), str(out),
               "--dtype", serving_dtype(checkpoint, dtype),
               "--max-tokens", str(max_tokens), "--max-model-len", str(ws.shape[1] + max_tokens + 16)]
        done = subprocess.run(cmd, env={**os.environ, **VLLM_ENV})
        if done.returncode != 0 or not out.is_file():
            raise TbqError(f"vLLM ({vllm_python}) failed on {checkpoint} (exit {done.returncode}); its log is above")
        return json.loads(out.read_text())


def vllm_perplexity(checkpoint: str, ws: torch.Tensor, vllm_python: str, dtype: str = "auto") -> float:
    """exp(mean next-token NLL) from vLLM's prompt log-probs over the same windows as :func:`perplexity`."""
    check_vllm_servable(Path(checkpoint), vllm_python)
    got = vllm_prompt_logprobs(checkpoint, ws, vllm_python, dtype)
    nll = -sum(sum(o["prompt_logprobs"]) for o in got)
    return math.exp(nll / sum(len(o["prompt_logprobs"]) for o in got))


def load_for_eval(target: str, dtype: torch.dtype | None = None):
    """(model, tokenizer) of a run directory or a model, in ``dtype`` (None: its own)."""
    from transformers import AutoTokenizer

    path = Path(target)
    if (path / "run.json").is_file():
        return load_fake_quant_model(path, dtype), AutoTokenizer.from_pretrained(path)
    model, tok = load_model(resolve_model(target))
    return (model if dtype is None else model.to(dtype)), tok


def report_result(result: dict, path: Path | None) -> None:
    """Print ``result`` as one JSON line and, when ``path`` is given, write it there indented."""
    print(json.dumps(result))
    if path:
        path.write_text(json.dumps(result, indent=2))


def default_vllm_python() -> str:
    return os.environ.get("TBQ_VLLM_PYTHON", sys.executable)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    from transformers import AutoTokenizer

    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target")
    ap.add_argument("--dataset", default="exl2-wiki")
    ap.add_argument("--split", default="test", help="exl2-wiki: test = the held-out 20%% of articles")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--max-windows", type=int)
    ap.add_argument("--backend", choices=("torch", "vllm"), default="torch")
    ap.add_argument("--vllm-python", default=default_vllm_python())
    ap.add_argument("--dtype", default="auto",
                    help="activation dtype (auto: torch the model's own, vllm the checkpoint's fp16/bf16, per family)")
    ap.add_argument("--device", default="auto", help="torch backend")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    try:
        if a.backend == "torch":
            model, tok = load_for_eval(a.target, torch_dtype(a.dtype))
            ws = eval_windows(tok, a.dataset, a.seqlen, a.max_windows, a.split)
            ppl = perplexity(model, ws, pick_device(a.device))
        else:
            if not (Path(a.target) / "config.json").is_file():
                raise TbqError(f"{a.target} is not a checkpoint folder; the vllm backend takes a `tbq export` folder")
            ws = eval_windows(AutoTokenizer.from_pretrained(a.target), a.dataset, a.seqlen, a.max_windows, a.split)
            ppl = vllm_perplexity(a.target, ws, a.vllm_python, a.dtype)
    except TbqError as e:
        raise SystemExit(f"error: {e}") from None
    result = {"target": a.target, "backend": a.backend, "dataset": a.dataset, "split": a.split,
              "seqlen": a.seqlen, "windows": int(ws.shape[0]), "tokens": int(ws.numel()), "ppl": ppl}
    report_result(result, a.json)
    return result


if __name__ == "__main__":
    main()
