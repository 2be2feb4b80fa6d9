"""Several processes (gloo on CPU): the split of calibration sequences and linears, and a 2-process run that
gives the 1-process bits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from turboboa_export.errors import TbqError
from turboboa_export.pipeline.distributed import Ranks

from .test_pipeline import block_tensors

ROOT = Path(__file__).parents[1]
# Llama-3-8B's linears: (out, in)
LLAMA3_8B = {"q": (4096, 4096), "k": (1024, 4096), "v": (1024, 4096), "o": (4096, 4096), "gate": (14336, 4096),
             "up": (14336, 4096), "down": (4096, 14336)}


def test_shares_cover_the_sequences_once():
    n = 11
    shares = [list(range(n))[Ranks(r, 3).share(n)] for r in range(3)]
    assert sum(shares, []) == list(range(n)) and all(len(s) in (3, 4) for s in shares)
    assert Ranks().share(n) == slice(0, n)
    with pytest.raises(TbqError, match="cannot be split over 3 processes"):
        Ranks(0, 3).share(2)


def test_owners_spread_the_costliest_first():
    """down_proj (the costliest at Llama-3-8B shapes) gets a rank of its own, the rest share the other; one process
    owns everything; the assignment depends only on the costs, so every rank computes the same."""
    costs = {role: out * inp ** 2 + inp ** 3 for role, (out, inp) in LLAMA3_8B.items()}
    owners = Ranks(1, 2).owners(costs)
    assert owners == Ranks(0, 2).owners(costs)
    assert [r for r in owners.values()].count(owners["down"]) == 1
    assert Ranks().owners(costs) == dict.fromkeys(costs, 0)
    four = Ranks(0, 4).owners(costs)
    assert set(four.values()) == {0, 1, 2, 3}


def quantize_cli(model, text, out, *extra, device="cpu"):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "tbq_cli.main", "quantize", str(model), "--dataset", str(text),
                           "--seqlen", "48", "--method", "turboboa", "--bits", "3", "--group-size", "32", "--device",
                           device, "--quiet", "-o", str(out), *map(str, extra)], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("windows", [("--nsamples", 2), ("--nsamples", 3, "--holdout", 1),
                                     ("--nsamples", 2, "--centred-keys")], ids=["two", "held-out", "centred-keys"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs 2 GPUs")])])
def test_two_processes_give_the_one_process_bits(tiny_models, calib_text, tmp_path, device, windows):
    """TurboBoA (H_in, R and the attention statistics all used) on 2 calibrating windows: split one per process,
    each sum is the 1-process sum (s_0 + s_1, one thread each), so codes, scales, zeros, untouched tensors, losses
    and block errors are equal; the linears computed by rank 1 reach rank 0's run through the broadcast (gloo on
    CPU, NCCL on 2 GPUs). With a third window held out, rank 1 holds it and rank 0 none: its error is the 1-process
    one. Catches token counts not summed over the ranks (the damping's d / T differs), held-out windows in a
    rank's statistics, a held-out error not summed over the ranks, and (``--centred-keys``) the centred key sums
    left out of what the ranks add up, or the flag lost on its way from the command line to run.json's settings
    (from there to the statistics: ``test_centred_keys_setting_reaches_the_statistics``)."""
    one, two = tmp_path / "one", tmp_path / "two"
    for out, extra in ((one, ()), (two, ("--gpus", 2))):
        res = quantize_cli(tiny_models["llama"], calib_text, out, *windows, *extra, device=device)
        assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == f"wrote {two}"  # rank 0 speaks, once
    for run in (one, two):  # the flag reached both runs' settings (what a dropped flag would leave: two plain runs)
        quant = json.loads((run / "run.json").read_text())["config"]["quant"]
        assert quant["centred_keys"] is ("--centred-keys" in windows)
    a, b = block_tensors(one), block_tensors(two)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = load_file(one / "rest.safetensors"), load_file(two / "rest.safetensors")
    assert ra.keys() == rb.keys() and all(torch.equal(ra[k], rb[k]) for k in ra)
    ma, mb = ([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (one, two))
    assert [m["module"] for m in ma] == [m["module"] for m in mb]
    for x, y in zip(ma, mb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6) and x["loss"] > 0
        assert x["block_output_rel_error"] == pytest.approx(y["block_output_rel_error"], rel=1e-6)
        held, other = x["block_output_rel_error_heldout"], y["block_output_rel_error_heldout"]
        if "--holdout" in windows:
            assert held == pytest.approx(other, rel=1e-6) and held > 0
        else:
            assert held is None and other is None


def test_an_error_on_the_ranks_is_one_line(tiny_models, calib_text, tmp_path):
    res = quantize_cli(tiny_models["llama"], calib_text, tmp_path / "o", "--nsamples", 1, "--gpus", 2)
    assert res.returncode == 2, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == ["error: 1 calibration sequences cannot be split over 2 processes; raise --nsamples to at least "
                     "2 or use fewer GPUs"], res.stderr[-3000:]
    assert not (tmp_path / "o.partial").exists()
