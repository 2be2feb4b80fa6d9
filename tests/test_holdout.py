"""Issue 20, held-out windows: the last ``--holdout`` calibration windows enter no statistic, run through both
streams block by block, and each block's output error on them is reported (metrics.jsonl, tbq inspect)."""

import json

import pytest
import torch

from turboboa_export.calibration import calibration_batch
from turboboa_export.config import build_config
from turboboa_export.models import load_tokenizer
from turboboa_export.pipeline.rundir import load_fake_quant_model
from turboboa_export.pipeline.sequential import quantize_model

from .cli_checks import cli, one_line_error
from .test_pipeline import block_tensors, interrupt_after_first_block, quick_args

SEQLEN = 48


def config(model, text, nsamples, holdout, method="turboboa"):
    return build_config(str(model), quant={"method": method, "bits": 3},
                        calib={"dataset": str(text), "nsamples": nsamples, "seqlen": SEQLEN, "holdout": holdout},
                        device="cpu")


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def block_errors(run, key):
    """Block -> its error under ``key`` (each module of a block carries the block's)."""
    return {m["block"]: m[key] for m in metrics(run)}


@pytest.fixture(scope="module")
def held_run(tiny_models, calib_text, tmp_path_factory):
    """TurboBoA W3 on the tiny Llama, 6 windows of which the last 2 are held out."""
    return quantize_model(config(tiny_models["llama"], calib_text, 6, 2), tmp_path_factory.mktemp("held") / "run",
                          progress=False)


def block_outputs(model, ids):
    """Every block's output ([windows, seqlen, hidden] per block, the last one's before the final norm), float64."""
    outs = []
    hooks = [block.register_forward_hook(lambda _m, _a, out: outs.append(out[0] if isinstance(out, tuple) else out))
             for block in model.model.layers]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    return outs


def test_heldout_error_is_the_float64_error_of_the_quantized_model_on_the_heldout_windows(held_run, tiny_models,
                                                                                            calib_text):
    """Recomputed apart from the pipeline: the full-precision model and the run's fake-quantized model, in float64,
    on the last two windows; block i's error is ||Y_q,i - Y_fp,i|| / ||Y_fp,i|| of their block outputs over both
    windows (the quantized model's block inputs come from its quantized blocks, as the quantized stream's do). The
    same on the first four windows gives the calibration error. Catches the held-out error taken on calibrating
    windows (or the reverse), before the block is quantized, against the wrong stream, or per window instead of
    over all, and held-out windows dropped from the streams after block 0. Tolerance: the pipeline's float32."""
    from transformers import AutoModelForCausalLM

    ids = calibration_batch(load_tokenizer(str(tiny_models["llama"])), str(calib_text), 6, SEQLEN, 0)[0]
    fp = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float64).eval()
    quant = load_fake_quant_model(held_run, dtype=torch.float64)
    for windows, key in ((slice(4, 6), "block_output_rel_error_heldout"), (slice(0, 4), "block_output_rel_error")):
        ref = block_outputs(fp, ids[windows])
        got = block_outputs(quant, ids[windows])
        want = [float((q - f).norm() / f.norm()) for q, f in zip(got, ref)]
        reported = block_errors(held_run, key)
        assert list(reported) == [0, 1, 2]
        assert [reported[i] for i in range(3)] == pytest.approx(want, rel=1e-5), key  # measured: 1e-7
    held, calib = block_errors(held_run, "block_output_rel_error_heldout"), block_errors(held_run,
                                                                                       "block_output_rel_error")
    assert all(held[i] != pytest.approx(calib[i], rel=1e-3) for i in held)  # two different measurements


def test_heldout_windows_do_not_enter_the_statistics(held_run, tiny_models, calib_text, tmp_path):
    """The run holding out 2 of 6 windows has the bits of the run on the first 4 windows alone (TurboBoA: H_in, R,
    H_out, v's attention-weighted H_in and the token count of the damping all used), and of no run on all 6.
    Catches held-out windows summed into any statistic or counted as tokens, and the held-out windows taken from
    the front of the draw."""
    first4 = quantize_model(config(tiny_models["llama"], calib_text, 4, 0), tmp_path / "first4", progress=False)
    all6 = quantize_model(config(tiny_models["llama"], calib_text, 6, 0), tmp_path / "all6", progress=False)
    a, b, c = block_tensors(held_run), block_tensors(first4), block_tensors(all6)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert block_errors(first4, "block_output_rel_error") == block_errors(held_run, "block_output_rel_error")
    assert set(block_errors(first4, "block_output_rel_error_heldout").values()) == {None}
    cov = json.loads((held_run / "run.json").read_text())["calibration"]
    assert (cov["windows"], cov["tokens"], cov["heldout_windows"]) == (4, 4 * SEQLEN, 2)


def test_interrupted_run_resumes_to_the_same_heldout_errors(held_run, tiny_models, calib_text, tmp_path, monkeypatch):
    """Stopped after block 0 and resumed: block 0 is replayed from its saved weights, the held-out windows with it,
    so blocks 1 and 2 get the uninterrupted run's bits and held-out errors. Catches a replay that drops or
    mis-streams the held-out windows."""
    cfg = config(tiny_models["llama"], calib_text, 6, 2)
    interrupt_after_first_block(cfg, tmp_path / "resumed", monkeypatch)
    resumed = quantize_model(cfg, tmp_path / "resumed", resume=True, progress=False)
    a, b = block_tensors(held_run), block_tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    key = "block_output_rel_error_heldout"
    assert block_errors(resumed, key) == pytest.approx(block_errors(held_run, key), rel=1e-6)


def test_inspect_shows_the_heldout_error(held_run):
    res = cli("inspect", held_run)
    assert res.exit_code == 0, res.output
    last = block_errors(held_run, "block_output_rel_error_heldout")[2]
    assert f"(held-out windows: {last:.4f})" in res.output and '"holdout": 2' in res.output


@pytest.mark.parametrize("nsamples,holdout,expect", [(8, None, 2), (7, None, 0), (8, 0, 0), (4, 3, 3)])
def test_default_holdout(nsamples, holdout, expect):
    """Two windows when there are at least eight, else none; an explicit value (0 included) is kept."""
    assert build_config("m", calib={"nsamples": nsamples, "holdout": holdout}).calib.holdout == expect


@pytest.mark.parametrize("holdout,words", [(4, ("holdout", "4 held-out windows leave none of the 4", "--holdout")),
                                            (-1, ("holdout", ">= 0, got -1"))])
def test_bad_holdout_is_one_line(tiny_models, calib_text, tmp_path, holdout, words):
    """As many held-out windows as windows (nothing left to calibrate on), or fewer than none, is refused in one
    line naming the setting, before any work."""
    res = cli(*quick_args(tiny_models["llama"], calib_text, tmp_path / "o", "--holdout", holdout))
    one_line_error(res, *words)
    assert not (tmp_path / "o.partial").exists()
