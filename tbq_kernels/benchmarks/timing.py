"""Shared pieces of the GPU benchmarks: real models' linear shapes, random quantized weights, cold weight copies,
CUDA-graph timing, copy bandwidth, and vLLM's parallel state for calling its linear kernels in one process."""

from __future__ import annotations

import functools
import itertools
import socket
import statistics

import torch

from tbq_kernels.decode_layout import repack

SHAPES = {  # name: (N out, K in)
    "llama2-7b": {"q": (4096, 4096), "k": (4096, 4096), "v": (4096, 4096), "o": (4096, 4096),
                  "gate": (11008, 4096), "up": (11008, 4096), "down": (4096, 11008)},
    "llama3-8b": {"q": (4096, 4096), "k": (1024, 4096), "v": (1024, 4096), "o": (4096, 4096),
                  "gate": (14336, 4096), "up": (14336, 4096), "down": (4096, 14336)},
    # the same layers as vLLM runs them: q, k, v fused into one qkv linear, gate and up into one gate_up
    "llama2-7b-vllm": {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)},
    "llama3-8b-vllm": {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)},
}
CALLS = 20
COLD_BYTES = 256 * 2**20  # five times the H100/H200 L2


def cold_copies(make, nbytes: int) -> itertools.cycle:
    """A cycle over enough copies of ``make()`` (each ``nbytes``) to fill COLD_BYTES: timed calls that take the next
    copy each read their weights from DRAM, as one layer's weights are when a whole model decodes."""
    return itertools.cycle([make() for _ in range(max(1, -(-COLD_BYTES // nbytes)))])


def random_weight(n: int, k: int, bits: int, group: int, gen: torch.Generator):
    """A random symmetric N x K linear: (group size with -1 resolved to K, codes int64 [N, K], fp16 scales
    [N, K / group], the decode layout of both on the CPU)."""
    group = k if group == -1 else group
    codes = torch.randint(0, 2**bits, (n, k), generator=gen)
    scale = (torch.rand(n, k // group, generator=gen) * 0.02 + 1e-3).half()
    return group, codes, scale, repack(codes, scale, None, bits, group, torch.float16)


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
