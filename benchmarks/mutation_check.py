"""Mutation check: does some fast test fail when the library is wrong in a way that matters?

Each mutant is one exact text patch (file, old, new) applied to a temporary copy of the tree (never the working
tree); the mutant's fast tests then run in that copy with PYTHONPATH pointing at it. A mutant is killed when
pytest reports a failure. The unmutated copy runs every named test first and must pass. Prints a table (and
writes it with --report).

    python benchmarks/mutation_check.py [--only NAME ...] [--report results/mutation_report.txt]

Not part of CI: each mutant pays pytest's start-up (about 10 s) and its tests.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALGO = ("tests/test_turboboa_reference.py", "tests/test_turboboa.py", "tests/test_methods.py")
STREAMS = ("tests/test_streams.py",)
WIRING = ("tests/test_methods.py", "tests/test_pipeline.py::test_methods_differ_where_they_must")


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


TB = "turboboa_export/algorithms/turboboa.py"
SEQ = "turboboa_export/pipeline/sequential.py"
METH = "turboboa_export/methods.py"
AS = "turboboa_export/pipeline/attention_stats.py"
MUTANTS = [
    # the list
    Mutant("F2 row term dropped", TB, "err = err + wb @ r_hinv", "err = err", ALGO),
    Mutant("F2 row term sign flipped", TB, "err = err + wb @ r_hinv", "err = err - wb @ r_hinv", ALGO),
    Mutant("F1 row compensation removed", TB, "current[:, r2:] -= row_compensation(u_out, r1, r2) @ err", "pass", ALGO),
    Mutant("F3 grid from the original W", TB, "find_params_2d(flat_rows(wb), spec, -1, h_grid)",
           "find_params_2d(flat_rows(w[:, r1:r2]), spec, -1, h_grid)", ALGO),
    Mutant("refinement skipped (two-sided)", TB, "    if opts.refine_iters:\n", "    if False:\n", ALGO),
    Mutant("refinement skipped (one-sided)", TB, "if not opts.refine_iters:\n        return q",
           "if True:\n        return q", ALGO),
    Mutant("refinement without R (two-sided)", TB, "h_in, h_out, r, opts.refine_iters)",
           "h_in, h_out, None, opts.refine_iters)", ALGO),
    Mutant("refinement without R (one-sided)", TB, "None if r3 is None else r3[b], opts.refine_iters)",
           "None, opts.refine_iters)", ALGO),
    Mutant("H_in, R from the FP stream (swapped)", SEQ, "moments[key].add(seen[role], fp_seen[role])",
           "moments[key].add(fp_seen[role], seen[role])", STREAMS),
    Mutant("H_in, R from the FP stream only", SEQ, "moments[key].add(seen[role], fp_seen[role])",
           "moments[key].add(fp_seen[role], fp_seen[role])", STREAMS),
    Mutant("attention statistics from the FP stream only", SEQ, 'attn.add(seen["q"], fp_seen["q"], kwargs)',
           'attn.add(fp_seen["q"], fp_seen["q"], kwargs)', STREAMS),
    Mutant("alpha forced to 0 in the registry", METH, 'return cfg.alpha if cfg.method == "turboboa" else 0.0',
           "return 0.0", WIRING),
    Mutant("q/k one-sided GPTQ instead of two-sided", METH, 'if role in ("q", "k"):', "if role in ():", WIRING),
    Mutant("refinement off in the pipeline", METH, "TurboBoAOptions(cfg.rows, adaptive_grid(cfg), cfg.refine_iters,",
           "TurboBoAOptions(cfg.rows, adaptive_grid(cfg), 0,", WIRING),
    # further ones
    Mutant("GPTAQ column term dropped (lazy tail)", "turboboa_export/algorithms/gptq.py",
           "tail = tail - cols1 @ p[..., a:b, b:]", "tail = tail", ALGO),
    Mutant("GPTAQ column term dropped (in segment)", "turboboa_export/algorithms/column_segment.py",
           "update = update - col.unsqueeze(-1) * p1[..., i, i:].unsqueeze(-2)", "update = update", ALGO),
    Mutant("refinement step without H_out,jj", "turboboa_export/algorithms/refine.py",
           "den = hjj * (mh[:, cols_g] * m).sum(-1)", "den = (mh[:, cols_g] * m).sum(-1)", ALGO),
    Mutant("BoA with the adaptive grid", METH, 'return cfg.method == "turboboa" if', "return True if", WIRING),
    Mutant("R with the wrong sign", "turboboa_export/pipeline/statistics.py", "2 * (self.c_sum - self.h_sum)",
           "2 * (self.h_sum - self.c_sum)", STREAMS),
    # issue 20
    Mutant("fixed damping (token count ignored)", METH,
           "return token_damping(cfg.damp, cfg.sample_damp, h.shape[-1], tokens)", "return cfg.damp",
           ("tests/test_methods.py", "tests/test_damping.py")),
    Mutant("held-out windows in the statistics", SEQ, "fp[:n], q[:n], kwargs, with_r, attention,",
           "fp, q, kwargs, with_r, attention,", ("tests/test_holdout.py",)),
    Mutant("held-out full-precision stream not advanced", SEQ,
           "fp = fp_calibrating + run_stream(block, fp[n:], kwargs, device)", "fp = fp_calibrating + fp[n:]",
           ("tests/test_holdout.py",)),
    Mutant("R_v from the quantized stream only", AS,
           "self._fq = sandwich(self._fq, x_fp,", "self._fq = sandwich(self._fq, xq,",
           ("tests/test_attention_stats.py",)),
    # issue 20, centred keys (session 16)
    Mutant("centred keys without the -(AK)^T(AK) term", AS,
           "@ k - kbar.transpose(-1, -2) @ kbar", "@ k", ("tests/test_attention_stats.py",)),
    Mutant("centred keys: attention summed over the queries' axis", AS, "received = a.sum(1)", "received = a.sum(2)",
           ("tests/test_attention_stats.py",)),
    Mutant("q/k norm gain left out of H_out", AS, "m = m * g[:, None] * g[None, :]", "m = m",
           ("tests/test_attention_stats.py",)),
    Mutant("centred-keys setting not handed to the statistics", METH, "centred_keys=cfg.centred_keys)", ")",
           ("tests/test_attention_stats.py",)),
    Mutant("centred sums not reduced over the ranks", AS,
           "[self._qq, self._kc if self._kc is not None else self._kk, self._zz]",
           "[self._qq] + ([self._kk] if self._kk is not None else []) + [self._zz]",
           ("tests/test_distributed.py",)),
    Mutant("paired s.e. from the population sd", "benchmarks/calib_table.py", "/ (len(d) - 1) / len(d)",
           "/ len(d) / len(d)", ("tests/test_benchmark_scripts.py::test_calibration_table_paired_differences",)),
    Mutant("paired verdict from two standard errors", "benchmarks/calib_table.py", "half = t975(len(d) - 1) * se",
           "half = 2 * se", ("tests/test_benchmark_scripts.py::test_calibration_table_paired_differences",)),
]


def copy_tree(dest: Path) -> None:
    """The working tree's tracked and untracked-but-not-ignored files, copied to ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    """pytest -x on ``tests`` inside ``tree`` -> (return code, pytest's summary line, seconds)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=tree,
                          env=env, capture_output=True, text=True)
    lines = [l for l in done.stdout.splitlines() if re.search(r"\d+ (passed|failed|error)", l)]
    return done.returncode, (lines[-1].strip("= ") if lines else done.stdout[-200:]), time.time() - t0


def apply(tree: Path, m: Mutant) -> str:
    """Patch ``m`` into ``tree``; returns the file's original text (the old text must occur exactly once)."""
    path = tree / m.file
    text = path.read_text()
    if text.count(m.old) != 1:
        raise SystemExit(f"mutant {m.name!r}: the old text occurs {text.count(m.old)} times in {m.file}")
    path.write_text(text.replace(m.old, m.new))
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="mutant names (substrings) to run")
    ap.add_argument("--report", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    with tempfile.TemporaryDirectory(prefix="tbq-mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        every = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
        rc, summary, secs = run_tests(tree, every)
        if rc != 0:
            raise SystemExit(f"the unmutated tree fails its tests ({summary}); fix that first")
        rows = [("(none: baseline)", " ".join(every), summary, "pass", secs)]
        for m in mutants:
            original = apply(tree, m)
            try:
                rc, summary, secs = run_tests(tree, m.tests)
            finally:
                (tree / m.file).write_text(original)
            verdict = {0: "SURVIVED", 1: "killed"}.get(rc, f"error (rc {rc})")
            rows.append((m.name, " ".join(m.tests), summary, verdict, secs))
            print(f"{m.name}: {verdict} ({secs:.0f} s)", file=sys.stderr, flush=True)
    lines = [f"{'mutant':<46} {'result':<9} {'seconds':>7}  pytest summary  |  tests"]
    lines += [f"{n:<46} {v:<9} {s:>7.1f}  {summ}  |  {t}" for n, t, summ, v, s in rows]
    killed = sum(r[3] == "killed" for r in rows[1:])
    lines.append(f"{killed}/{len(rows) - 1} mutants killed")
    table = "\n".join(lines)
    print(table)
    if args.report:
        args.report.write_text(table + "\n")


if __name__ == "__main__":
    main()
