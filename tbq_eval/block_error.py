"""Block-output error of quantized runs against full precision, window by window, on a model's first blocks: the
measure of issue 20's real-model tests and benchmarks (tests/test_real_model.py, benchmarks/heldout_variants.py,
benchmarks/holdout_damping.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from turboboa_export.models import load_model, resolve_model
from turboboa_export.pipeline.rundir import load_fake_quant_model


def first_blocks(model: str, blocks: int, root: Path) -> Path:
    """``model`` (a built-in name or a model folder) cut to its first ``blocks`` decoder blocks and saved as a model
    folder under ``root``; a per-layer attention-type list (Gemma 3's sliding/full pattern) is cut with them."""
    m, tok = load_model(resolve_model(model))
    m.model.layers = m.model.layers[:blocks]
    m.config.num_hidden_layers = blocks
    if getattr(m.config, "layer_types", None) is not None:
        m.config.layer_types = m.config.layer_types[:blocks]
    path = root / f"{Path(model).name}-{blocks}blocks"
    m.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def last_block_errors(model_dir: Path, runs: dict[str, Path], windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """For each run (a tbq run directory of ``model_dir``, its fake-quantized weights) the relative error
    ||y_q - y_fp|| / ||y_fp|| of the last block's output on each window: {name: float64 [W]}; windows int64 [W, L]."""

    def outputs(model):
        seen = []
        hook = model.model.layers[-1].register_forward_hook(
            lambda _m, _a, out: seen.append((out[0] if isinstance(out, tuple) else out)[0]))
        with torch.no_grad():
            for w in windows:
                model(input_ids=w[None])
        hook.remove()
        return seen

    ref = outputs(load_model(str(model_dir))[0].eval())
    errors = {}
    for name, run in runs.items():
        got = outputs(load_fake_quant_model(run).eval())
        errors[name] = torch.tensor([float((a - b).norm() / b.norm()) for a, b in zip(got, ref)], dtype=torch.float64)
    return errors
