"""Perplexity over non-overlapping windows of a held-out text (algorithm.md section 8), no BOS added.

    python -m eval.ppl MODEL_OR_RUN [--dataset exl2-wiki] [--seqlen 2048] [--device auto] [--json OUT]

MODEL_OR_RUN is a tbq run directory (its fake-quantized weights), a Hugging Face model folder or a built-in name.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from turboboa_export.calibration import load_text, tokenize
from turboboa_export.models import load_model, resolve_model
from turboboa_export.pipeline.rundir import load_fake_quant_model
from turboboa_export.pipeline.sequential import pick_device


def windows(ids: torch.Tensor, seqlen: int) -> torch.Tensor:
    """Non-overlapping windows [n, seqlen] (the ragged tail is dropped)."""
    n = ids.numel() // seqlen
    return ids[: n * seqlen].reshape(n, seqlen)


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, seqlen: int, device: torch.device, progress: bool = True) -> float:
    """exp(mean next-token NLL) over all windows."""
    model.to(device)
    nll, count = 0.0, 0
    for w in tqdm(windows(ids, seqlen), desc="ppl", disable=not progress):
        w = w.to(device)[None]
        logits = model(input_ids=w).logits[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits, w[0, 1:], reduction="sum"))
        count += w.shape[1] - 1
    return math.exp(nll / count)


def load_for_eval(target: str, dtype: torch.dtype | None = None):
    """(model, tokenizer) of a run directory or a model."""
    from transformers import AutoTokenizer

    path = Path(target)
    if (path / "run.json").is_file():
        return load_fake_quant_model(path, dtype), AutoTokenizer.from_pretrained(path)
    return load_model(resolve_model(target))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target")
    ap.add_argument("--dataset", default="exl2-wiki")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    model, tok = load_for_eval(a.target)
    ids = tokenize(tok, load_text(a.dataset, a.split))
    ppl = perplexity(model, ids, a.seqlen, pick_device(a.device))
    result = {"target": a.target, "dataset": a.dataset, "split": a.split, "seqlen": a.seqlen,
              "tokens": int(windows(ids, a.seqlen).numel()), "ppl": ppl}
    print(json.dumps(result))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
