"""Time tbq's decode kernel on a model's decoder-layer linears with cold weights, against cuBLAS fp16 in the same run,
with its persistent blocks on every resident slot (the default) or capped at one or half a block per SM.

    python -m tbq_kernels.benchmarks.decode_schedules [--model llama2-7b] [--bits 4,3,2] [--group-size 128]
                                                      [--m 1,16] [--source FILE] [--json OUT]

Cold weights: each timed call reads a different copy of the weight (copies cycle through at least 256 MiB, five
times the H200's L2), as one layer's weights are when vLLM decodes a whole model; the CUDA-graph median per call is
summed over the layer's linears (seven, or the four vLLM fuses them into: the ``-vllm`` models). ``--source`` times
a variant of ``csrc/decode_gemm.cu`` (kernel experiments).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from tbq_kernels import decode_gemm as dg
from tbq_kernels.benchmarks.timing import SHAPES, cold_copies, graph_time, random_weight

def schedules() -> dict[str, int]:
    """Name -> max_blocks: every resident slot (0), one block per SM, half a block per SM."""
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return {"persistent": 0, f"{sms} blocks": sms, f"{sms // 2} blocks": sms // 2}


def time_shape(n: int, k: int, bits: int, group: int, m: int, gen: torch.Generator) -> dict:
    """Seconds per call of cuBLAS fp16 and of every schedule, cold weights, on an N x K linear at M rows."""
    group, _, _, packed = random_weight(n, k, bits, group, gen)
    x = torch.randn(m, k, generator=gen).half().cuda()
    dense = cold_copies(lambda: torch.randn(n, k, generator=gen).half().cuda(), n * k * 2)
    out = {"n": n, "k": k, "m": m, "bits": bits, "group": group,
           "fp16_s": graph_time(lambda: torch.nn.functional.linear(x, next(dense)))}
    del dense
    weights = cold_copies(lambda: packed.to("cuda"), n * k * bits // 8)
    for name, blocks in schedules().items():
        out[name] = graph_time(lambda: dg.decode_gemm(x, next(weights), max_blocks=blocks))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama2-7b", choices=sorted(SHAPES))
    ap.add_argument("--bits", default="4,3,2")
    ap.add_argument("--group-size", type=int, default=128, help="-1: per channel")
    ap.add_argument("--m", default="1,16")
    ap.add_argument("--source", type=Path, help="a variant of csrc/decode_gemm.cu to time instead")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA GPU; run it on the GPU machine")
    if a.source:
        dg.SOURCE = a.source.resolve()
        dg.library.cache_clear()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for bits, m in itertools.product((int(b) for b in a.bits.split(",")), (int(v) for v in a.m.split(","))):
        timed = {}
        for name, (n, k) in SHAPES[a.model].items():
            if (n, k) not in timed:
                timed[n, k] = time_shape(n, k, bits, a.group_size, m, gen)
            rows.append({"linear": name, **timed[n, k]})
            print(json.dumps(rows[-1]), flush=True)
    keys = dict.fromkeys((r["bits"], r["m"]) for r in rows)
    print(f"\n{a.model}, group {a.group_size}, cold weights: one layer's linears summed, us "
          f"(x fp16 = cuBLAS fp16 time / this)\n")
    print("| schedule | " + " | ".join(f"W{b} M={m}" for b, m in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name in ["fp16_s", *schedules()]:
        cells = []
        for b, m in keys:
            sel = [r for r in rows if (r["bits"], r["m"]) == (b, m)]
            t, fp = sum(r[name] for r in sel), sum(r["fp16_s"] for r in sel)
            cells.append(f"{t * 1e6:.1f}" + ("" if name == "fp16_s" else f" ({fp / t:.2f}x)"))
        print(f"| {'cuBLAS fp16' if name == 'fp16_s' else name} | " + " | ".join(cells) + " |")
    if a.json:
        a.json.write_text(json.dumps({"model": a.model, "source": str(dg.SOURCE), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
