"""Issue 20's table from ``benchmarks/gpu_calib_table.sh`` results: held-out perplexity per model, calibration and
weight setting, with the issue's order checks (3 bits: TurboBoA < GPTQ < RTN; 4 bits: TurboBoA <= GPTQ <= RTN, within
0.5% counting as equal; BoA <= GPTQ throughout).

    python benchmarks/calib_table.py RES_DIR [RES_DIR ...]   (reads each RES_DIR/<model>-<n>x<len>[s<seed>]/results.jsonl;
                                                            a seed is a calibration row of its own)

With several folders (runs of the table in several device sessions), a run in a later folder replaces the same
(model, calibration, method, setting) of an earlier one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METHODS = ("rtn", "gptq", "boa", "turboboa")
EQUAL = 0.005  # relative difference under which two perplexities count as equal


def at_most(a: float, b: float) -> bool:
    """a <= b with a 0.5% tolerance."""
    return a <= b * (1 + EQUAL)


def order_checks(ppl: dict[str, float], bits: int) -> list[str]:
    """The issue's orderings for one setting (method -> perplexity), each 'name PASS|FAIL'; missing methods skipped."""
    checks = []
    if all(m in ppl for m in ("turboboa", "gptq", "rtn")):
        t, g, r = ppl["turboboa"], ppl["gptq"], ppl["rtn"]
        if bits == 3:
            checks.append(("TurboBoA < GPTQ < RTN", t < g < r))
        else:
            checks.append(("TurboBoA <= GPTQ <= RTN", at_most(t, g) and at_most(g, r)))
    if "boa" in ppl and "gptq" in ppl:
        checks.append(("BoA <= GPTQ", at_most(ppl["boa"], ppl["gptq"])))
    return [f"{name} {'PASS' if ok else 'FAIL'}" for name, ok in checks]


def table(*roots: Path) -> str:
    """Markdown: one row per (model, calibration, preset), columns fp and the four methods, then the checks; a later
    root's runs replace an earlier one's."""
    lines = ["| model | calibration | setting | fp | RTN | GPTQ | BoA | TurboBoA | checks |", "|---" * 9 + "|"]
    lanes = sorted({log.parent.name for root in roots for log in root.glob("*/results.jsonl")})
    for lane in lanes:
        logs = [root / lane / "results.jsonl" for root in roots if (root / lane / "results.jsonl").is_file()]
        rows = [json.loads(line) for log in logs for line in log.read_text().splitlines() if line.strip()]
        fp = next((r["ppl"] for r in rows if r["run"] == "fp"), None)
        settings: dict[str, dict[str, float]] = {}
        bits: dict[str, int] = {}
        for r in rows:
            if r["run"] != "fp":
                settings.setdefault(r["preset"], {})[r["method"]] = r["ppl"]
                bits[r["preset"]] = r["bits"]
        model, calib = lane.rsplit("-", 1)
        for preset, ppl in settings.items():
            cells = [f"{ppl[m]:.2f}" if m in ppl else "-" for m in METHODS]
            fp_cell = f"{fp:.2f}" if fp is not None else "-"
            lines.append(f"| {model} | {calib} | {preset} | {fp_cell} | " + " | ".join(cells)
                         + f" | {'; '.join(order_checks(ppl, bits[preset]))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2 or not all(Path(a).is_dir() for a in sys.argv[1:]):
        raise SystemExit("usage: python benchmarks/calib_table.py RES_DIR [RES_DIR ...] (folders gpu_calib_table.sh "
                         "wrote; later ones replace earlier runs)")
    print(table(*map(Path, sys.argv[1:])))
