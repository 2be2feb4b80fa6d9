"""Per-layer time of tbq's decode kernel against cuBLAS fp16, Marlin, Machete and Humming, on one GPU, in one run.

    python -m tbq_kernels.benchmarks.decode_shapes [--models llama2-7b,llama3-8b] [--bits 4,3,2] [--group-size 128]
                                                   [--m 1,2,4,8,16,64,256,2048] [--json OUT]

For each model's decoder-layer linears (q, k, v, o, gate, up, down, or the four vLLM fuses them into: the ``-vllm``
models; random symmetric codes, fp16 scales) and each row count M: the median time per call replayed from a CUDA
graph, summed over the layer's linears, with cold weights (each call reads another copy of the weight:
``timing.cold_copies``), as when vLLM decodes a whole model. "tbq" is the decode kernel for M <= 16; above, the
plugin runs the stock kernel vLLM chooses, and the column shows the fastest stock kernel measured (vLLM's choice may
be slower). Ratios are the sum of the other column's times over tbq's; achieved bandwidth counts the codes, scales, x
and y once. The stock kernels need vLLM (and humming-kernels for Humming); missing ones are left blank with the
reason in the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tbq_kernels.benchmarks.timing import (SHAPES, cold_copies, copy_bandwidth, graph_time, random_weight,
                                           vllm_single_process)
from tbq_kernels.decode_gemm import MAX_ROWS, decode_gemm

STOCK = ("Marlin", "Machete", "Humming")
WEIGHT_TYPES = {2: "uint2b2", 3: "uint3b4", 4: "uint4b8", 8: "uint8b128"}


def stock_kernel(name: str, codes: torch.Tensor, scale: torch.Tensor, bits: int, group: int):
    """x -> y through vLLM's ``name`` linear kernel on the same codes (as exported), or the reason it cannot run."""
    from fractions import Fraction

    failed = vllm_single_process()
    if failed:
        return failed
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.kernels.linear import mixed_precision as mp
    from vllm.model_executor.parameter import GroupQuantScaleParameter, PackedvLLMParameter
    from vllm.scalar_type import scalar_types

    from turboboa_export.export.pack import pack_rows

    n, k = codes.shape
    cfg = mp.MPLinearLayerConfig(full_weight_shape=(k, n), partition_weight_shape=(k, n),
                                 weight_type=getattr(scalar_types, WEIGHT_TYPES[bits]), act_type=torch.float16,
                                 group_size=-1 if group == k else group, zero_points=False, has_g_idx=False)
    cls = getattr(mp, f"{name}LinearKernel", None)
    if cls is None:
        return f"vLLM has no {name}LinearKernel"
    ok, why = cls.can_implement(cfg)
    if not ok:
        return why
    layer = torch.nn.Module()
    loader = lambda *a, **kw: None  # noqa: E731
    try:
        with set_current_vllm_config(VllmConfig()):
            layer.register_parameter("weight_packed", PackedvLLMParameter(
                input_dim=1, output_dim=0, packed_factor=Fraction(32, bits), packed_dim=1,
                data=pack_rows(codes, bits).cuda(), weight_loader=loader))
            layer.register_parameter("weight_scale", GroupQuantScaleParameter(
                output_dim=0, input_dim=1, data=scale.clone().cuda(), weight_loader=loader))
            layer.input_size_per_partition, layer.output_size_per_partition = k, n
            layer.output_partition_sizes, layer.params_dtype, layer.layer_name = [n], torch.float16, "bench"  # Humming
            layer.has_bias = False  # Humming
            kernel = cls(cfg, w_q_param_name="weight_packed", w_s_param_name="weight_scale",
                         w_zp_param_name="weight_zero_point", w_gidx_param_name="weight_g_idx")
            kernel.process_weights_after_loading(layer)
    except Exception as e:  # a vLLM-internal requirement we do not meet: report it
        return f"{type(e).__name__}: {e}"[:160]
    return lambda x: kernel.apply_weights(layer, x)


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


def bench_shape(n: int, k: int, bits: int, group: int, ms: list[int], gen: torch.Generator) -> list[dict]:
    """Times (seconds, cold weights) and relative errors of every kernel on one N x K weight at each M."""
    group, codes, scale, packed = random_weight(n, k, bits, group, gen)
    w64 = ((codes.cuda().double() - 2 ** (bits - 1)) * scale.cuda().double().repeat_interleave(group, 1))  # [N, K]
    qbytes = n * k * bits // 8
    dense = cold_copies(lambda: torch.randn(n, k, generator=gen).half().cuda(), n * k * 2)
    ours = cold_copies(lambda: packed.to("cuda"), qbytes)
    stock = {}
    for name in STOCK:  # copies of a kernel that cannot run are its reason, repeated
        made = cold_copies(lambda: stock_kernel(name, codes, scale, bits, group), qbytes)
        first = next(made)
        stock[name] = made if callable(first) else first
    rows = []
    for m in ms:
        x = torch.randn(m, k, generator=gen).half().cuda()
        ref = x.double() @ w64.T if m <= MAX_ROWS else None
        row = {"n": n, "k": k, "m": m, "bits": bits, "group": group,
               "fp16_s": graph_time(lambda: torch.nn.functional.linear(x, next(dense))),
               "bytes": qbytes + n * (k // group) * 2 + (m * k + m * n) * 2}
        if m <= MAX_ROWS:
            row["decode_s"] = graph_time(lambda: decode_gemm(x, next(ours)))
            row["decode_rel_err"] = rel_error(decode_gemm(x, next(ours)), ref)
        for name, fns in stock.items():
            if isinstance(fns, str):
                row[f"{name.lower()}_why"] = fns
                continue
            row[f"{name.lower()}_s"] = graph_time(lambda: next(fns)(x))
            if ref is not None:
                row[f"{name.lower()}_rel_err"] = rel_error(next(fns)(x), ref)
        best = min((row[f"{s.lower()}_s"] for s in STOCK if f"{s.lower()}_s" in row), default=None)
        row["best_stock_s"] = best
        row["tbq_s"] = row["decode_s"] if m <= MAX_ROWS else best
        rows.append(row)
    return rows


def summary(rows: list[dict], copy_bw: float) -> str:
    """Markdown: per model, bits and M, one layer's linears summed; ratios of the others' time to tbq's."""
    out = [f"copy bandwidth {copy_bw / 1e12:.2f} TB/s (read + write)", "",
           "| model | bits | M | fp16 us | tbq us | x fp16 | Marlin us | Machete us | Humming us | x best stock | "
           "tbq GB/s (% copy) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r["model"], r["bits"], r["m"]) for r in rows)
    for model, bits, m in keys:
        sel = [r for r in rows if (r["model"], r["bits"], r["m"]) == (model, bits, m)]
        tot = lambda key: sum(r[key] for r in sel) if all(r.get(key) for r in sel) else None  # noqa: E731
        fp, ours, best = tot("fp16_s"), tot("tbq_s"), tot("best_stock_s")
        f = lambda t: "-" if t is None else f"{t * 1e6:.1f}"  # noqa: E731
        ratio = lambda t: "-" if t is None or ours is None else f"{t / ours:.2f}"  # noqa: E731
        bw = None if ours is None else sum(r["bytes"] for r in sel) / ours
        out.append(f"| {model} | {bits} | {m} | {f(fp)} | {f(ours)} | {ratio(fp)} | {f(tot('marlin_s'))} | "
                   f"{f(tot('machete_s'))} | {f(tot('humming_s'))} | {ratio(best)} | "
                   + ("-" if bw is None else f"{bw / 1e9:.0f} ({100 * bw / copy_bw:.0f}%)") + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama2-7b,llama3-8b")
    ap.add_argument("--bits", default="4,3,2")
    ap.add_argument("--group-size", type=int, default=128, help="-1: per channel")
    ap.add_argument("--m", default="1,2,4,8,16,64,256,2048")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA GPU; run it on the GPU machine")
    unknown = set(a.models.split(",")) - set(SHAPES)
    if unknown:
        raise SystemExit(f"error: unknown model {sorted(unknown)}; choose from {sorted(SHAPES)}")
    ms = [int(v) for v in a.m.split(",")]
    gen = torch.Generator().manual_seed(0)
    copy_bw = copy_bandwidth()
    rows, measured = [], {}
    for bits in (int(b) for b in a.bits.split(",")):
        for model in a.models.split(","):
            for name, (n, k) in SHAPES[model].items():
                if (n, k, bits) not in measured:
                    measured[(n, k, bits)] = bench_shape(n, k, bits, a.group_size, ms, gen)
                    for r in measured[(n, k, bits)]:
                        print(json.dumps({"model": model, "linear": name, **r}, default=str), flush=True)
                rows += [{"model": model, "linear": name, **r} for r in measured[(n, k, bits)]]
    print(summary(rows, copy_bw))
    if a.json:
        a.json.write_text(json.dumps({"copy_bandwidth": copy_bw, "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
