"""Issue 20's table from ``benchmarks/gpu_calib_table.sh`` results: held-out perplexity per model, calibration and
weight setting, with the issue's order checks (3 bits: TurboBoA < GPTQ < RTN; 4 bits: TurboBoA <= GPTQ <= RTN, within
0.5% counting as equal; BoA <= GPTQ throughout). BoA run with ``adaptive_grid`` (protocol ``boa:PRESET:adaptive``) is a
column of its own, "BoA adaptive", checked against GPTQ in the same way; so are BoA and TurboBoA with ``centred_keys``
(protocol ``:centred``), "BoA centred" and "TurboBoA centred" (the latter under TurboBoA's order).

    python benchmarks/calib_table.py RES_DIR [RES_DIR ...]   (reads each RES_DIR/<model>-<n>x<len>[s<seed>]/results.jsonl;
                                                            a seed is a calibration row of its own)

A second table gives each method's mean over calibration seeds where a cell was run at several, with the same checks
(one run per cell cannot separate methods whose seed spread is larger than their difference: Gemma at 16 x 512), and a
third each method's paired relative difference from GPTQ over the seeds both ran, with its standard error and a
verdict from the 95% t interval, and each variant's (adaptive, centred) from its own method.

With several folders (runs of the table in several device sessions), a run in a later folder replaces the same
(model, calibration, method, setting) of an earlier one.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from turboboa_export.config import QuantConfig
from turboboa_export.methods import adaptive_grid

COLUMNS = {"rtn": "RTN", "gptq": "GPTQ", "boa": "BoA", "boa-adaptive": "BoA adaptive", "boa-centred": "BoA centred",
           "turboboa": "TurboBoA", "turboboa-centred": "TurboBoA centred"}  # column key -> heading
METHODS = tuple(COLUMNS)
HEADINGS = " | ".join(COLUMNS.values())
EQUAL = 0.005  # relative difference under which two perplexities count as equal


def at_most(a: float, b: float) -> bool:
    """a <= b with a 0.5% tolerance."""
    return a <= b * (1 + EQUAL)


def order_checks(ppl: dict[str, float], bits: int) -> list[str]:
    """The issue's orderings for one setting (method -> perplexity), each 'name PASS|FAIL'; missing methods skipped."""
    checks = []
    for turbo in ("turboboa", "turboboa-centred"):
        if not all(m in ppl for m in (turbo, "gptq", "rtn")):
            continue
        t, g, r = ppl[turbo], ppl["gptq"], ppl["rtn"]
        if bits == 3:
            checks.append((f"{COLUMNS[turbo]} < GPTQ < RTN", t < g < r))
        else:
            checks.append((f"{COLUMNS[turbo]} <= GPTQ <= RTN", at_most(t, g) and at_most(g, r)))
    for boa, name in (("boa", "BoA"), ("boa-adaptive", "BoA adaptive"), ("boa-centred", "BoA centred")):
        if boa in ppl and "gptq" in ppl:
            checks.append((f"{name} <= GPTQ", at_most(ppl[boa], ppl["gptq"])))
    return [f"{name} {'PASS' if ok else 'FAIL'}" for name, ok in checks]


def method_key(run: dict) -> str:
    """A protocol line's column: its method, with "-adaptive" / "-fixed" where the run set a grid other than its
    method's own and "-centred" where it set ``centred_keys`` (only the keys of COLUMNS are columns of the tables;
    "turboboa-fixed" or "boa-adaptive-centred" stay out of every column)."""
    grid, own = run.get("adaptive_grid"), adaptive_grid(QuantConfig(method=run["method"]))
    key = run["method"] if grid is None or grid == own else f"{run['method']}-{'adaptive' if grid else 'fixed'}"
    return f"{key}-centred" if run.get("centred_keys") else key


def lanes(*roots: Path) -> dict[str, tuple[float | None, dict[str, dict[str, float]], dict[str, int]]]:
    """Each lane (folder name <model>-<n>x<len>[s<seed>]) -> (fp perplexity or None, preset -> method -> perplexity,
    preset -> bits), a later root's runs replacing an earlier one's."""
    out = {}
    for lane in sorted({log.parent.name for root in roots for log in root.glob("*/results.jsonl")}):
        logs = [root / lane / "results.jsonl" for root in roots if (root / lane / "results.jsonl").is_file()]
        rows = [json.loads(line) for log in logs for line in log.read_text().splitlines() if line.strip()]
        settings: dict[str, dict[str, float]] = {}
        bits: dict[str, int] = {}
        for r in rows:
            if r["run"] != "fp":
                settings.setdefault(r["preset"], {})[method_key(r)] = r["ppl"]
                bits[r["preset"]] = r["bits"]
        out[lane] = next((r["ppl"] for r in rows if r["run"] == "fp"), None), settings, bits
    return out


def table(*roots: Path) -> str:
    """Markdown: one row per (model, calibration, preset), columns fp and the methods, then the checks; a later
    root's runs replace an earlier one's."""
    lines = [f"| model | calibration | setting | fp | {HEADINGS} | checks |", "|---" * (len(COLUMNS) + 5) + "|"]
    for lane, (fp, settings, bits) in lanes(*roots).items():
        model, calib = lane.rsplit("-", 1)
        for preset, ppl in settings.items():
            cells = [f"{ppl[m]:.2f}" if m in ppl else "-" for m in METHODS]
            fp_cell = f"{fp:.2f}" if fp is not None else "-"
            lines.append(f"| {model} | {calib} | {preset} | {fp_cell} | " + " | ".join(cells)
                         + f" | {'; '.join(order_checks(ppl, bits[preset]))} |")
    return "\n".join(lines)


def seed_runs(*roots: Path) -> tuple[dict[tuple[str, str, str], dict[str, dict[int, float]]],
                                     dict[tuple[str, str, str], int]]:
    """(model, NxLEN, preset) -> method -> seed -> perplexity (lane NxLEN is seed 0, NxLENsS seed S), and the
    cell's bits."""
    per_seed: dict[tuple[str, str, str], dict[str, dict[int, float]]] = {}
    bits: dict[tuple[str, str, str], int] = {}
    for lane, (_, settings, lane_bits) in lanes(*roots).items():
        model, calib = lane.rsplit("-", 1)
        base, _, seed = calib.partition("s")
        for preset, ppl in settings.items():
            bits[model, base, preset] = lane_bits[preset]
            for method, value in ppl.items():
                per_seed.setdefault((model, base, preset), {}).setdefault(method, {})[int(seed or 0)] = value
    return per_seed, bits


def seed_means(*roots: Path) -> str:
    """Markdown: for each (model, NxLEN, preset) run at two or more calibration seeds, each method's mean perplexity
    over its seeds with their count; the checks compare only the methods run at every seed of that cell."""
    per_seed, bits = seed_runs(*roots)
    lines = [f"| model | calibration | setting | seeds | {HEADINGS} | checks (methods at every seed) |",
             "|---" * (len(COLUMNS) + 5) + "|"]
    for key, methods in per_seed.items():
        seeds = sorted({s for values in methods.values() for s in values})
        if len(seeds) < 2:
            continue
        mean = {m: sum(v.values()) / len(v) for m, v in methods.items()}
        cells = [f"{mean[m]:.2f}" + ("" if len(methods[m]) == len(seeds) else f" ({len(methods[m])})")
                 if m in methods else "-" for m in METHODS]
        complete = {m: mean[m] for m in methods if len(methods[m]) == len(seeds)}
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {','.join(map(str, seeds))} | " + " | ".join(cells)
                     + f" | {'; '.join(order_checks(complete, bits[key]))} |")
    return "\n".join(lines)


# Student's t 97.5% quantiles by degrees of freedom (1-30); above 30, the Cornish-Fisher expansion in t975
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` >= 1 degrees of freedom (two-sided 95% interval half-width in
    standard errors): the table to 30, above it z + (z^3 + z) / 4v + (5z^5 + 16z^3 + 3z) / 96v^2 with z = 1.95996
    (Cornish-Fisher; within 1e-4 of the quantile there)."""
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964  # the normal's 97.5% quantile
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


# (method, reference) pairs of the paired table: every method against GPTQ, each variant against its own method
PAIRS = [(m, "gptq") for m in METHODS if m != "gptq"] + [
    ("boa-adaptive", "boa"), ("boa-centred", "boa"), ("turboboa-centred", "turboboa")]


def paired_differences(*roots: Path) -> str:
    """Markdown: for each cell and (method, reference) of PAIRS with two or more seeds both ran, the paired relative
    difference d_s = ppl_s / ppl_reference,s - 1 over those seeds: mean and standard error (sample standard deviation
    / sqrt(n), in %), the seeds where the method is above the reference by more than the 0.5% tolerance, and the
    verdict: "above" or "below" where the two-sided 95% t interval of the mean (mean ± t975(n - 1) s.e.) lies wholly
    beyond the tolerance, "diverged" where a perplexity is not finite, else "within seed noise"."""
    per_seed, _ = seed_runs(*roots)
    lines = ["| model | calibration | setting | method | against | seeds | mean d (%) | s.e. (%) | seeds above | "
             "verdict |", "|---" * 10 + "|"]
    for key, methods in per_seed.items():
        for method, ref in PAIRS:
            if method not in methods or ref not in methods:
                continue
            seeds = sorted(set(methods[method]) & set(methods[ref]))
            if len(seeds) < 2:
                continue
            d = [methods[method][s] / methods[ref][s] - 1 for s in seeds]  # paired relative difference
            if not all(math.isfinite(x) for x in d):
                lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {method} | {ref} | {','.join(map(str, seeds))} | "
                             "- | - | - | diverged |")
                continue
            mean = sum(d) / len(d)
            se = (sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5  # s / sqrt(n), s with n - 1
            above = sum(x > EQUAL for x in d)
            half = t975(len(d) - 1) * se  # half-width of the 95% interval of the mean
            verdict = "above" if mean - half > EQUAL else "below" if mean + half < -EQUAL else "within seed noise"
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {method} | {ref} | {','.join(map(str, seeds))} | "
                         f"{100 * mean:+.2f} | {100 * se:.2f} | {above} of {len(d)} | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2 or not all(Path(a).is_dir() for a in sys.argv[1:]):
        raise SystemExit("usage: python benchmarks/calib_table.py RES_DIR [RES_DIR ...] (folders gpu_calib_table.sh "
                         "wrote; later ones replace earlier runs)")
    roots = list(map(Path, sys.argv[1:]))
    print(table(*roots))
    print("\nMean over calibration seeds (a cell's count in parentheses where a method lacks some of its seeds):\n")
    print(seed_means(*roots))
    print("\nPaired at the seeds both ran, each method against GPTQ and each variant against its method "
          "(d = ppl / ppl_against - 1 per seed):\n")
    print(paired_differences(*roots))
