"""Per-layer time of the W4A4/W4A8 linear (tbq_kernels.int_act) against cuBLAS fp16 and vLLM's CUTLASS int8
scaled-mm (stock W8A8), on one decoder layer's linears of a real shape, at several token counts M, side by side.

    python -m tbq_kernels.benchmarks.int_gemm_shapes [--shape llama3-8b] [--m 1,16,128,2048,16384] [--json OUT]

Times are medians of CUDA-graph replays (triton.testing.do_bench_cudagraph), microseconds summed over the layer's
linears (qkv, o, gate_up, down); ``quant`` is the per-token activation quantization alone, ``w4a4`` includes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tbq_kernels.int_act import int_gemm, quantize_act
from tbq_kernels.layout import random_weight

SHAPES = {  # (N, K) of qkv, o, gate_up, down
    "llama3-8b": [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)],
    "llama2-7b": [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)],
}


def bench(fn) -> float:
    """Median microseconds of ``fn`` replayed in a CUDA graph."""
    import triton

    return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=50)


def layer_times(shape: str, m: int, gen: torch.Generator) -> dict[str, float]:
    """Summed microseconds over the layer's linears for each implementation."""
    import vllm._custom_ops as ops

    out = {"fp16": 0.0, "w8a8_cutlass": 0.0, "quant": 0.0, "w4a4_g128": 0.0, "w4a4_channel": 0.0}
    for n, k in SHAPES[shape]:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        w16 = torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02
        out["fp16"] += bench(lambda: torch.nn.functional.linear(x, w16))
        w8 = torch.randint(-127, 128, (k, n), device="cuda", dtype=torch.int8).t().contiguous().t()  # column-major
        s_w = torch.rand(n, 1, device="cuda") * 1e-3

        def w8a8():
            q, s, _ = ops.scaled_int8_quant(x)
            return ops.cutlass_scaled_mm(q, w8, s, s_w, torch.float16)

        out["w8a8_cutlass"] += bench(w8a8)
        out["quant"] += bench(lambda: quantize_act(x, 4, 0.9))
        for label, group in (("w4a4_g128", 128), ("w4a4_channel", k)):
            w = random_weight(n, k, 4, group, False, torch.float16, gen, "cuda")
            out[label] += bench(lambda: int_gemm(*quantize_act(x, 4, 0.9), w, torch.float16))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--m", default="1,16,128,2048,16384")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"| M | fp16 us | W8A8 CUTLASS us | act quant us | W4A4 g128 us | W4A4 channel us | g128 vs fp16 | "
          f"g128 vs W8A8 |\n|---|---|---|---|---|---|---|---|")
    for m in (int(v) for v in a.m.split(",")):
        t = layer_times(a.shape, m, gen)
        rows.append({"shape": a.shape, "m": m, **t})
        print(f"| {m} | {t['fp16']:.1f} | {t['w8a8_cutlass']:.1f} | {t['quant']:.1f} | {t['w4a4_g128']:.1f} | "
              f"{t['w4a4_channel']:.1f} | {t['fp16'] / t['w4a4_g128']:.2f}x | "
              f"{t['w8a8_cutlass'] / t['w4a4_g128']:.2f}x |", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
