"""Session 17 (issue 17): tbq's decode kernel and variants of its source, side by side in one process on one GPU.

For each source: every (bits, M) output checked against ``decode_gemm_ref`` (float64) on one random linear, then the
per-layer time (a model's decoder-layer linears summed, cold weights, CUDA-graph medians, ``timing``), with cuBLAS
fp16 timed on the same shapes in the same run. Sources are built in parallel first.

    python results/decode-h200-s17/compare_sources.py SOURCE [SOURCE ...] [--model llama2-7b] [--bits 4,3,2]
                                                      [--m 1,8] [--group-size 128] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from tbq_kernels import build
from tbq_kernels import decode_gemm as dg
from tbq_kernels.benchmarks.timing import SHAPES, cold_copies, graph_time, random_weight
from tbq_kernels.reference import decode_gemm_ref


def libraries(sources: list[Path], capability: tuple[int, int]) -> dict[Path, object]:
    """Each source's ctypes library, the builds run in parallel."""
    t0 = time.time()
    with ThreadPoolExecutor(len(sources)) as pool:
        list(pool.map(lambda s: build.built(s, capability), sources))
    print(f"built {len(sources)} sources in {time.time() - t0:.0f} s", flush=True)
    libs = {}
    for s in sources:
        dg.SOURCE = s
        dg.library.cache_clear()
        libs[s] = dg.library(capability)
    return libs


def use(lib) -> None:
    """Make ``decode_gemm`` call ``lib``."""
    dg.library = lambda capability: lib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sources", nargs="+", type=Path)
    ap.add_argument("--model", default="llama2-7b", choices=sorted(SHAPES))
    ap.add_argument("--bits", default="4,3,2")
    ap.add_argument("--m", default="1,8")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    sources = [s.resolve() for s in a.sources]
    libs = libraries(sources, torch.cuda.get_device_capability())
    gen = torch.Generator().manual_seed(0)
    keys = list(itertools.product((int(b) for b in a.bits.split(",")), (int(v) for v in a.m.split(","))))
    worst = {s: 0.0 for s in sources}
    for bits, m in keys:  # correctness first: y against the float64 reference
        group, _, _, packed = random_weight(1024, 4096, bits, a.group_size, gen)
        w = packed.to("cuda")
        x = torch.randn(m, 4096, generator=gen).half().cuda()
        ref = decode_gemm_ref(x, w).double()
        for s in sources:
            use(libs[s])
            y = dg.decode_gemm(x, w).double()
            err = float((y - ref).norm() / ref.norm()) if torch.isfinite(y).all() else float("inf")
            worst[s] = max(worst[s], err)
    for s in sources:
        print(f"{s.name}: worst relative error against the reference {worst[s]:.2e}", flush=True)
    rows = []
    for bits, m in keys:
        timed = {}
        for name, (n, k) in SHAPES[a.model].items():
            if (n, k) not in timed:
                _, _, _, packed = random_weight(n, k, bits, a.group_size, gen)
                x = torch.randn(m, k, generator=gen).half().cuda()
                dense = cold_copies(lambda: torch.randn(n, k, generator=gen).half().cuda(), n * k * 2)
                row = {"n": n, "k": k, "bits": bits, "m": m,
                       "fp16_s": graph_time(lambda: torch.nn.functional.linear(x, next(dense)))}
                del dense
                weights = cold_copies(lambda: packed.to("cuda"), n * k * bits // 8)
                for s in sources:
                    use(libs[s])
                    row[s.name] = graph_time(lambda: dg.decode_gemm(x, next(weights)))
                timed[n, k] = row
            rows.append({"linear": name, **timed[n, k]})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{a.model}, group {a.group_size}, cold weights: one layer's linears summed, us "
          f"(x first = {sources[0].name} time / this; x fp16 = cuBLAS fp16 time / this)\n")
    print("| source | " + " | ".join(f"W{b} M={m}" for b, m in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name in ["fp16_s", *(s.name for s in sources)]:
        cells = []
        for b, m in keys:
            sel = [r for r in rows if (r["bits"], r["m"]) == (b, m)]
            t = sum(r[name] for r in sel)
            first, fp = sum(r[sources[0].name] for r in sel), sum(r["fp16_s"] for r in sel)
            cells.append(f"{t * 1e6:.1f}" + ("" if name == "fp16_s" else f" ({first / t:.3f}x, {fp / t:.2f}x fp16)"))
        print(f"| {'cuBLAS fp16' if name == 'fp16_s' else name} | " + " | ".join(cells) + " |")
    if a.json:
        a.json.write_text(json.dumps({"model": a.model, "errors": {s.name: worst[s] for s in sources},
                                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
