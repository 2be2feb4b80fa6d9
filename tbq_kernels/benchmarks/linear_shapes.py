"""Dequant-GEMM timing on Llama-2-7B and Llama-3-8B linear shapes, side by side in one run (CUDA).

    python -m tbq_kernels.benchmarks.linear_shapes [--models llama2-7b,llama3-8b] [--m 1,4,16,64,256,2048]
                                               [--group-size 128] [--sweep [--write-tuned]] [--json OUT]

Per shape and M: torch fp16 matmul (cuBLAS), tbq's kernel (int4 symmetric, the export's layout), and vLLM's
Machete and Marlin on the same codes when vLLM is importable. Each time is the median per-call time of a CUDA
graph of 20 calls (no launch overhead). Bandwidth: (int4 weights + scales + x + y bytes) / time, next to a measured
device copy. The summary sums one decoder layer's seven linears. ``--sweep`` also times other tile/split choices
for tbq's kernel and prints the fastest per shape; ``--write-tuned`` records them in tbq_kernels/tuned_configs.json
(what ``tbq_kernels.ops.launch_config`` reads) and re-times the kernel with them for the summary.
"""

from __future__ import annotations

import argparse
import functools
import json
import socket
import statistics
from pathlib import Path

import torch

from tbq_kernels.layout import DequantWeight, random_weight
from tbq_kernels.ops import GEMV_MAX_ROWS, LaunchConfig, dequant_gemm, launch_config, record_tuned, tuned_key
from tbq_kernels.reference import dequantize_ref

SHAPES = {  # name: (N out, K in)
    "llama2-7b": {"q": (4096, 4096), "k": (4096, 4096), "v": (4096, 4096), "o": (4096, 4096),
                  "gate": (11008, 4096), "up": (11008, 4096), "down": (4096, 11008)},
    "llama3-8b": {"q": (4096, 4096), "k": (1024, 4096), "v": (1024, 4096), "o": (4096, 4096),
                  "gate": (14336, 4096), "up": (14336, 4096), "down": (4096, 14336)},
}
CALLS = 20


def graph_time(fn, reps: int = 10) -> float:
    """Median seconds per call of ``fn`` replayed from a CUDA graph of CALLS calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / CALLS)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy, counting bytes read and written."""
    a = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    return 2 * a.numel() / graph_time(lambda: b.copy_(a), reps=5)


def random_int4(n: int, k: int, group: int, gen: torch.Generator) -> DequantWeight:
    """Symmetric int4 codes as exported, fp16 scales, on the GPU."""
    return random_weight(n, k, 4, group, False, torch.float16, gen, "cuda")


@functools.cache
def vllm_single_process() -> str | None:
    """vLLM's parallel state for one process (its weight parameters ask for the tensor-parallel rank); the reason
    when that fails."""
    try:
        from vllm.config import VllmConfig, set_current_vllm_config
        from vllm.distributed import init_distributed_environment, initialize_model_parallel

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with set_current_vllm_config(VllmConfig()):
            init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="nccl",
                                         distributed_init_method=f"tcp://127.0.0.1:{port}")
            initialize_model_parallel(1, 1)
    except Exception as e:  # vLLM missing or broken: report, keep benchmarking the rest
        return f"vLLM unavailable ({type(e).__name__}: {e})"[:120]
    return None


def vllm_kernel(name: str, w: DequantWeight):
    """x -> y through vLLM's Machete or Marlin linear kernel on the same codes, or the reason it cannot run."""
    failed = vllm_single_process()
    if failed:
        return failed
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.kernels.linear import mixed_precision as mp
    from vllm.model_executor.parameter import GroupQuantScaleParameter, PackedvLLMParameter
    from vllm.scalar_type import scalar_types

    n, k = w.out_features, w.in_features
    cfg = mp.MPLinearLayerConfig(full_weight_shape=(k, n), partition_weight_shape=(k, n),
                                 weight_type=scalar_types.uint4b8, act_type=torch.float16,
                                 group_size=w.group_size, zero_points=False, has_g_idx=False)
    cls = getattr(mp, f"{name}LinearKernel")
    ok, why = cls.can_implement(cfg)
    if not ok:
        return why
    layer = torch.nn.Module()
    loader = lambda *a, **kw: None  # noqa: E731
    try:
        with set_current_vllm_config(VllmConfig()):
            layer.register_parameter("weight_packed", PackedvLLMParameter(
                input_dim=1, output_dim=0, packed_factor=8, packed_dim=1, data=w.packed.clone(), weight_loader=loader))
            layer.register_parameter("weight_scale", GroupQuantScaleParameter(
                output_dim=0, input_dim=1, data=w.scale.clone(), weight_loader=loader))
            layer.input_size_per_partition, layer.output_size_per_partition = k, n
            kernel = cls(cfg, w_q_param_name="weight_packed", w_s_param_name="weight_scale",
                         w_zp_param_name="weight_zero_point", w_gidx_param_name="weight_g_idx")
            kernel.process_weights_after_loading(layer)
    except Exception as e:  # a vLLM-internal requirement we do not meet: report it
        return f"{type(e).__name__}: {e}"[:120]
    return lambda x: kernel.apply_weights(layer, x)


def sweep_configs(m: int, w: DequantWeight) -> list[LaunchConfig]:
    """Candidate launches for one shape and row count (those that fit it)."""
    splits = (1, 2, 4, 8, 16)
    if m <= GEMV_MAX_ROWS:
        cands = [LaunchConfig(0, bn, bk, split, nw) for bn in (16, 32, 64, 128) for bk in (64, 128)
                 for nw in (2, 4, 8) for split in splits]
    else:
        bm, nw = (16, 4) if m <= 16 else (64, 4) if m <= 128 else (128, 8)
        cands = [LaunchConfig(bm, bn, bk, split, nw, ns) for bn in (64, 128) for bk in (64, 128) for ns in (3, 4)
                 for split in splits[:3]]
    return [c for c in cands if c.fits(m, w)]


def rel_error(y: torch.Tensor, x: torch.Tensor, w64: torch.Tensor) -> float:
    """|y - x W^T| / |x W^T| with W the float64 dequantized weight (on the GPU)."""
    ref = x.double() @ w64.T
    return float((y.double() - ref).norm() / ref.norm())


def bench_shape(n: int, k: int, ms: list[int], group: int, sweep: bool, gen: torch.Generator) -> list[dict]:
    w = random_int4(n, k, group, gen)
    w64 = dequantize_ref(w).cuda()
    dense = torch.randn(n, k, generator=gen).half().cuda()
    others = {name: vllm_kernel(name, w) for name in ("Machete", "Marlin")}
    rows = []
    for m in ms:
        x = torch.randn(m, k, generator=gen).half().cuda()
        row = {"n": n, "k": k, "m": m, "group": group,
               "fp16_s": graph_time(lambda: torch.nn.functional.linear(x, dense)),
               "tbq_s": graph_time(lambda: dequant_gemm(x, w)), "tbq_config": str(launch_config(m, w)),
               "tbq_rel_err": rel_error(dequant_gemm(x, w), x, w64)}
        for name, fn in others.items():
            if callable(fn):
                row[f"{name.lower()}_s"] = graph_time(lambda: fn(x))
                row[f"{name.lower()}_rel_err"] = rel_error(fn(x), x, w64)
            else:
                row[f"{name.lower()}_why"] = fn
        if sweep:
            best = min(((graph_time(lambda: dequant_gemm(x, w, c), reps=3), c) for c in sweep_configs(m, w)),
                       key=lambda t: t[0])
            row["tbq_best_s"], row["tbq_best_config"], row["tuned_key"] = best[0], best[1], tuned_key(m, w)
        row["tbq_bytes"] = n * k // 2 + n * (k // group) * 2 + (m * k + m * n) * 2
        rows.append(row)
    return rows


def retime(shapes: set[tuple[int, int]], ms: list[int], group: int) -> dict[tuple[int, int, int], float]:
    """Seconds per call of ``dequant_gemm`` with its current launch choice, per (N, K, M), on fresh inputs."""
    gen = torch.Generator().manual_seed(1)
    out = {}
    for n, k in sorted(shapes):
        w = random_int4(n, k, group, gen)
        for m in ms:
            x = torch.randn(m, k, generator=gen).half().cuda()
            out[(n, k, m)] = graph_time(lambda: dequant_gemm(x, w))
    return out


def summary(rows: list[dict], copy_bw: float) -> str:
    """Markdown: per model and M, one layer's seven linears summed, ratios to cuBLAS fp16."""
    out = [f"copy bandwidth {copy_bw / 1e12:.2f} TB/s (read + write)", "",
           "| model | M | cuBLAS fp16 us | tbq us | tbq x fp16 | Machete us | Marlin us | tbq x Machete | "
           "tbq x Marlin | tbq GB/s (% copy) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        for m in dict.fromkeys(r["m"] for r in rows):
            sel = [r for r in rows if r["model"] == model and r["m"] == m]
            tot = lambda key: sum(r[key] for r in sel) if all(key in r for r in sel) else None  # noqa: E731
            fp, ours, mach, marl = tot("fp16_s"), tot("tbq_s"), tot("machete_s"), tot("marlin_s")
            bw = sum(r["tbq_bytes"] for r in sel) / ours
            f = lambda t: "-" if t is None else f"{t * 1e6:.1f}"  # noqa: E731
            r_ = lambda t: "-" if t is None else f"{t / ours:.2f}"  # noqa: E731
            out.append(f"| {model} | {m} | {f(fp)} | {f(ours)} | {fp / ours:.2f} | {f(mach)} | {f(marl)} | "
                       f"{r_(mach)} | {r_(marl)} | {bw / 1e9:.0f} ({100 * bw / copy_bw:.0f}%) |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama2-7b,llama3-8b")
    ap.add_argument("--m", default="1,4,16,64,256,2048")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--sweep", action="store_true", help="time other launches for tbq's kernel; print the fastest")
    ap.add_argument("--write-tuned", action="store_true",
                    help="with --sweep: record the fastest launches in tbq_kernels/tuned_configs.json, then measure again")
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
    for model in a.models.split(","):
        for name, (n, k) in SHAPES[model].items():
            if (n, k) not in measured:
                measured[(n, k)] = bench_shape(n, k, ms, a.group_size, a.sweep, gen)
            rows += [{"model": model, "linear": name, **r} for r in measured[(n, k)]]
            for r in measured[(n, k)]:
                extra = f" best {r['tbq_best_s'] * 1e6:.1f} us {r['tbq_best_config']}" if a.sweep else ""
                print(f"{model} {name} N={n} K={k} M={r['m']}: fp16 {r['fp16_s'] * 1e6:.1f} us, tbq "
                      f"{r['tbq_s'] * 1e6:.1f} us (err {r['tbq_rel_err']:.1e}), machete "
                      f"{r.get('machete_s', 0) * 1e6:.1f} {r.get('machete_why', '')}, marlin "
                      f"{r.get('marlin_s', 0) * 1e6:.1f} {r.get('marlin_why', '')}{extra}", flush=True)
    if a.sweep and a.write_tuned:
        record_tuned({r["tuned_key"]: r["tbq_best_config"] for r in rows})
        tuned = retime(set(measured), ms, a.group_size)  # the kernel as shipped now, measured like the others
        for r in rows:
            r["tbq_s_untuned"], r["tbq_s"] = r["tbq_s"], tuned[(r["n"], r["k"], r["m"])]
    print(summary(rows, copy_bw))
    if a.json:
        a.json.write_text(json.dumps({"copy_bandwidth": copy_bw, "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
