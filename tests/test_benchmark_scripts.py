"""Pieces of the GPU benchmark scripts that can be checked without a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serving_rows_never_share_a_checkpoint_they_differ_in():
    """Two rows share a random checkpoint folder only when they write the same checkpoint: a folder named by the
    row's position let ``--only "W4A4 channel (tbq)"`` reuse the fp16 row's folder and time fp16 as W4A4."""
    bench = load("int_act_serving")
    for shape in ("llama3-8b", "llama2-7b"):
        folder_of = {}
        for rows in bench.SETS.values():
            for label, (kwargs, _) in rows.items():
                folder = bench.checkpoint_name(shape, label)
                assert folder_of.setdefault(folder, kwargs) == kwargs, (folder, label)
        assert len(folder_of) >= len(bench.INT_ACT)


def test_calibration_table_orders_and_tolerance(tmp_path):
    """The issue-20 checks: strict order at 3 bits, 0.5% tolerance at 4 bits and for BoA <= GPTQ; the table reads
    each lane's results.jsonl (model and calibration from the folder name)."""
    import json

    table = load("calib_table")
    assert table.order_checks({"turboboa": 10.0, "gptq": 11.0, "rtn": 12.0, "boa": 11.04}, 3) == [
        "TurboBoA < GPTQ < RTN PASS", "BoA <= GPTQ PASS"]
    assert table.order_checks({"turboboa": 11.0, "gptq": 11.0, "rtn": 12.0}, 3) == ["TurboBoA < GPTQ < RTN FAIL"]
    assert table.order_checks({"turboboa": 11.04, "gptq": 11.0, "rtn": 11.0}, 4) == ["TurboBoA <= GPTQ <= RTN PASS"]
    assert table.order_checks({"turboboa": 11.1, "gptq": 11.0, "rtn": 12.0}, 4) == ["TurboBoA <= GPTQ <= RTN FAIL"]
    assert table.order_checks({"boa": 11.1, "gptq": 11.0}, 4) == ["BoA <= GPTQ FAIL"]
    lane = tmp_path / "gemma3-270m-16x512"
    lane.mkdir()
    rows = [{"run": "fp", "ppl": 18.0}] + [
        {"run": f"{m}-w3", "method": m, "preset": "w3", "bits": 3, "ppl": p}
        for m, p in (("rtn", 300.0), ("gptq", 60.0), ("boa", 59.0), ("turboboa", 55.0))]
    (lane / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    md = table.table(tmp_path)
    assert ("| gemma3-270m | 16x512 | w3 | 18.00 | 300.00 | 60.00 | 59.00 | - | - | 55.00 | - | "
            "TurboBoA < GPTQ < RTN PASS; BoA <= GPTQ PASS |") in md
    # a later folder's run replaces the same cell of an earlier one; the others stay
    later = tmp_path / "later" / "gemma3-270m-16x512"
    later.mkdir(parents=True)
    (later / "results.jsonl").write_text(json.dumps({"run": "turboboa-w3", "method": "turboboa", "preset": "w3",
                                                     "bits": 3, "ppl": 65.0}))
    assert ("| gemma3-270m | 16x512 | w3 | 18.00 | 300.00 | 60.00 | 59.00 | - | - | 65.00 | - | "
            "TurboBoA < GPTQ < RTN FAIL; BoA <= GPTQ PASS |") in table.table(tmp_path, tmp_path / "later")
    # BoA with adaptive_grid (protocol boa:w3:adaptive) is a column of its own, not a replacement of BoA's
    (later / "results.jsonl").write_text(json.dumps({"run": "boa-w3-adaptive", "method": "boa", "preset": "w3",
                                                     "bits": 3, "adaptive_grid": True, "ppl": 61.0}))
    assert ("| gemma3-270m | 16x512 | w3 | 18.00 | 300.00 | 60.00 | 59.00 | 61.00 | - | 55.00 | - | "
            "TurboBoA < GPTQ < RTN PASS; BoA <= GPTQ PASS; BoA adaptive <= GPTQ FAIL |") in table.table(
        tmp_path, tmp_path / "later")
    # a grid a method takes anyway keeps its column; TurboBoA on a fixed grid enters none
    assert [table.method_key({"method": m, "adaptive_grid": g}) for m, g in (
        ("boa", False), ("turboboa", True), ("turboboa", False), ("boa", None), ("gptq", None))] == [
        "boa", "turboboa", "turboboa-fixed", "boa", "gptq"]
    # centred keys (protocol :centred) are columns of their own, with their own checks
    assert [table.method_key({"method": m, "centred_keys": c}) for m, c in (
        ("boa", True), ("turboboa", True), ("turboboa", False))] == ["boa-centred", "turboboa-centred", "turboboa"]
    assert table.order_checks({"turboboa-centred": 54.0, "gptq": 60.0, "rtn": 300.0, "boa-centred": 61.0}, 3) == [
        "TurboBoA centred < GPTQ < RTN PASS", "BoA centred <= GPTQ FAIL"]


def test_calibration_table_script_refuses_a_malformed_calibration(tmp_path):
    """gpu_calib_table.sh refuses a JOBS calibration that is not NxLEN or NxLENsSEED in one line, before any lane
    starts (nothing written under RES); catches `16x512s` reaching the protocol as `--seed ""` and `16` as a length."""
    import os
    import subprocess

    for calib in ("16x512s", "16", "16x512x1"):
        res = tmp_path / calib
        proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_calib_table.sh")], capture_output=True, text=True,
                              env={**os.environ, "RES": str(res), "JOBS": f"smollm2-135m/{calib}/rtn:w3"})
        assert proc.returncode == 2 and "NxLEN or NxLENsSEED" in proc.stderr and calib in proc.stderr, proc.stderr
        assert not (res / "stages.txt").exists()


def test_calibration_table_seed_means(tmp_path):
    """Lanes NxLEN and NxLENsS are seeds of one cell: each method's mean over its seeds, a count where it lacks some,
    and checks only among the methods run at every seed. Catches a seed lane read as a calibration of its own, a
    mean over the wrong runs, and a method with fewer seeds entering the checks; a cell with one seed is left out."""
    import json

    table = load("calib_table")

    def lane(name, runs):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text("\n".join(json.dumps(
            {"run": f"{m}-w4", "method": m, "preset": "w4", "bits": 4, "ppl": p}) for m, p in runs))

    lane("gemma3-270m-16x512", [("gptq", 14.0), ("boa", 14.4), ("rtn", 27.0), ("turboboa", 13.0)])
    lane("gemma3-270m-16x512s1", [("gptq", 16.6), ("boa", 14.3)])
    lane("gemma3-270m-16x512s2", [("gptq", 15.2), ("boa", 15.3)])
    lane("gemma3-270m-128x2048", [("gptq", 14.0), ("boa", 13.4)])
    md = table.seed_means(tmp_path)
    assert "| gemma3-270m | 16x512 | w4 | 0,1,2 | 27.00 (1) | 15.27 | 14.67 | - | - | 13.00 (1) | - | BoA <= GPTQ PASS |" in md
    assert "128x2048" not in md and "16x512s1" not in md


def t_cdf(q: float, df: int, steps: int = 20000) -> float:
    """P(T <= q) for Student's t, q >= 0, in float64: 1/2 plus Simpson's rule on the density (slow, obvious)."""
    import math

    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    f = lambda t: c * (1 + t * t / df) ** (-(df + 1) / 2)  # noqa: E731
    h = q / steps
    return 0.5 + h / 3 * sum((1 if i in (0, steps) else 4 if i % 2 else 2) * f(i * h) for i in range(steps + 1))


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t (p > 1/2) by bisection on ``t_cdf``."""
    lo, hi = 0.0, 20.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df, 4000) < p else (lo, mid)
    return (lo + hi) / 2


def test_t975_is_the_student_t_quantile():
    """calib_table.t975 (a table to 30 degrees of freedom, a Cornish-Fisher expansion above) against the t density
    integrated numerically: P(T <= t975(df)) = 0.975 to 1e-4. Catches a table shifted by one degree of freedom, the
    normal's 1.96 used for small samples, and a wrong expansion above 30."""
    table = load("calib_table")
    for df in [*range(1, 32), 40, 100]:
        assert abs(t_cdf(table.t975(df), df) - 0.975) < 1e-4, df


def test_calibration_table_paired_differences(tmp_path):
    """The paired table against an independent float64 reference (statistics.mean / statistics.stdev of the per-seed
    ratios, the t quantile by bisection on the numerically integrated t density) on fresh random perplexities: BoA
    against GPTQ and BoA centred against BoA. Catches an unpaired difference (ratio of the means), the population
    standard deviation, seeds not shared with the reference entering the pairs, a variant paired against GPTQ where its
    own method is named, a verdict that ignores the standard error or uses the normal's 2 for a few seeds, seeds
    counted above the reference inside the 0.5% tolerance, and a diverged run left to a verdict."""
    import json
    import random
    import statistics

    table = load("calib_table")
    rng = random.Random()
    gptq = {s: rng.uniform(10, 20) for s in range(5)}
    boa = {s: gptq[s] * rng.uniform(0.9, 1.2) for s in range(4)}  # seed 4: GPTQ only
    boa[7] = 30.0  # a seed GPTQ lacks: must not enter the pairs against GPTQ
    centred = {s: boa[s] * rng.uniform(0.85, 1.1) for s in (1, 2, 3)}
    centred[4] = 20.0  # a seed BoA lacks: must not enter the pairs against BoA
    for s in range(8):
        runs = [(m, values[s]) for m, values in (("gptq", gptq), ("boa", boa), ("boa-centred", centred))
                if s in values]
        if runs:
            (tmp_path / f"gemma3-270m-16x512s{s}").mkdir()
            (tmp_path / f"gemma3-270m-16x512s{s}" / "results.jsonl").write_text("\n".join(json.dumps(
                {"run": f"{m}-w4", "method": m.split("-")[0], "preset": "w4", "bits": 4, "ppl": p,
                 **({"centred_keys": True} if m.endswith("centred") else {})}) for m, p in runs))
    md = table.paired_differences(tmp_path)
    for method, ref, mine, theirs, seeds in (("boa", "gptq", boa, gptq, (0, 1, 2, 3)),
                                             ("boa-centred", "boa", centred, boa, (1, 2, 3))):
        d = [mine[s] / theirs[s] - 1 for s in seeds]
        mean, se = statistics.mean(d), statistics.stdev(d) / len(d) ** 0.5
        half = t_quantile(0.975, len(d) - 1) * se
        verdict = "above" if mean - half > 0.005 else "below" if mean + half < -0.005 else "within seed noise"
        row = (f"| gemma3-270m | 16x512 | w4 | {method} | {ref} | {','.join(map(str, seeds))} | {100 * mean:+.2f} | "
               f"{100 * se:.2f} | {sum(x > 0.005 for x in d)} of {len(d)} | {verdict} |")
        assert row in md, (gptq, boa, centred, md)
    # fixed cases: a consistent shift gets its verdict; a mean shift of +5.7% whose seeds disagree (+10%, -5%, +12%)
    # does not; two seeds at +0.6% and +0.7% are not "above" (the t interval of two seeds is 12.7 s.e. wide each
    # side, the normal's 2 would say above); seeds inside the tolerance are not counted above; a run that diverged
    for name, ratios, seeds_above in (("above", (1.10, 1.101, 1.102), 3), ("below", (0.90, 0.901, 0.902), 0),
                                      ("within seed noise", (1.10, 0.95, 1.12), 2),
                                      ("within seed noise", (1.006, 1.007), 2),
                                      ("within seed noise", (1.003, 1.004, 1.002), 0),
                                      ("diverged", (1.01, float("inf"), 1.02), None)):
        root = tmp_path / f"{name}-{len(ratios)}-{ratios[0]}"
        for s, ratio in enumerate(ratios):
            (root / f"gemma3-270m-16x512s{s}").mkdir(parents=True)
            (root / f"gemma3-270m-16x512s{s}" / "results.jsonl").write_text("\n".join(json.dumps(
                {"run": f"{m}-w4", "method": m, "preset": "w4", "bits": 4, "ppl": p})
                for m, p in (("gptq", 10.0 + s), ("boa", (10.0 + s) * ratio))))
        md = table.paired_differences(root)
        assert f" | {name} |" in md, (ratios, md)
        if seeds_above is not None:
            assert f" | {seeds_above} of {len(ratios)} | " in md, (ratios, md)
