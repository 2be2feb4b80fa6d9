"""``dequant_gemm``: checks at the boundary, a launch configuration per shape, and the Triton launch.

Launch configurations come from ``tuned_configs.json`` (written by ``tbq_kernels.benchmarks.linear_shapes --sweep
--write-tuned``: the fastest measured tiles per weight shape and row count) where it has the shape, else from a
heuristic. Either way a configuration is only used when its K tiles fit inside the weight's groups.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .layout import DequantWeight

GEMV_MAX_ROWS = 4  # up to this many rows of x, the GEMV (one weight read per row, the rest from L2)
TARGET_PROGRAMS = 4 * 132  # about four waves of an H100's SMs
TUNED = Path(__file__).with_name("tuned_configs.json")
TUNED_ROWS = (1, 4, 16, 64, 256, 2048)  # the row counts the table is measured at


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and K split of one launch."""

    block_m: int  # 0: the GEMV
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 3

    def fits(self, m: int, w: DequantWeight) -> bool:
        """K tiles inside groups and splits covering K exactly; the GEMV only for a few rows."""
        return (w.group_size % self.block_k == 0 and w.in_features % (self.block_k * self.split_k) == 0
                and (self.block_m == 0) == (m <= GEMV_MAX_ROWS))


def tuned_key(m: int, w: DequantWeight) -> str:
    """The table's key: weight shape, bits, group, and the smallest measured row count >= m."""
    rows = next((r for r in TUNED_ROWS if r >= m), TUNED_ROWS[-1])
    return f"{w.out_features}x{w.in_features}:b{w.bits}:g{w.group_size}:m{rows}"


@functools.cache
def tuned_table() -> dict[str, dict]:
    """The measured table (empty without one)."""
    return json.loads(TUNED.read_text()) if TUNED.is_file() else {}


def _split_k(tiles: int, k: int, block_k: int) -> int:
    """The power of two (at most 16) that brings ``tiles`` programs near TARGET_PROGRAMS and divides K's tiles."""
    split = 1
    while split < 16 and tiles * split * 2 <= TARGET_PROGRAMS and k % (block_k * split * 2) == 0:
        split *= 2
    return split


def heuristic_config(m: int, w: DequantWeight) -> LaunchConfig:
    """Tiles by row count, K split to fill the GPU."""
    n, k = w.out_features, w.in_features
    block_k = min(128, w.group_size)
    if m <= GEMV_MAX_ROWS:
        block_n = 32
        return LaunchConfig(0, block_n, block_k, _split_k(-(-n // block_n) * m, k, block_k))
    block_m = 16 if m <= 16 else 64 if m <= 128 else 128
    block_n = 64 if m <= 128 else 128
    block_k = min(64, w.group_size) if m > 128 else block_k
    tiles = -(-m // block_m) * -(-n // block_n)
    return LaunchConfig(block_m, block_n, block_k, _split_k(tiles, k, block_k), num_warps=4 if m <= 128 else 8)


def launch_config(m: int, w: DequantWeight) -> LaunchConfig:
    """The configuration ``dequant_gemm`` uses for ``m`` rows of x: the tuned one where it fits, else the heuristic."""
    entry = tuned_table().get(tuned_key(m, w))
    tuned = LaunchConfig(**entry) if entry else None
    return tuned if tuned is not None and tuned.fits(m, w) else heuristic_config(m, w)


def record_tuned(results: dict[str, LaunchConfig]) -> None:
    """Merge measured best configurations into the table (atomic write)."""
    table = {**tuned_table(), **{key: asdict(cfg) for key, cfg in results.items()}}
    tmp = TUNED.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(table.items())), indent=1) + "\n")
    os.replace(tmp, TUNED)
    tuned_table.cache_clear()


def check_inputs(x: torch.Tensor, w: DequantWeight) -> None:
    """One-line errors for inputs the kernels cannot take."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"activations must be float16 or bfloat16, got {x.dtype}")
    if x.shape[-1] != w.in_features:
        raise ValueError(f"x has {x.shape[-1]} features but the weight expects K={w.in_features}")
    if w.scale.dtype != x.dtype or (w.zero is not None and w.zero.dtype != x.dtype):
        raise ValueError(f"scales/zeros are {w.scale.dtype} but x is {x.dtype}; load the weight with dtype={x.dtype}")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (kernel tests without a GPU)
    if not ((x.is_cuda or interpreted) and x.device == w.packed.device):
        raise ValueError("dequant_gemm runs on CUDA with x and the weight on one device; use dequant_gemm_ref on CPU")


def dequant_gemm(x: torch.Tensor, w: DequantWeight, config: LaunchConfig | None = None) -> torch.Tensor:
    """y = x W^T for the quantized weight ``w``; x [..., K] float16/bfloat16 on CUDA -> [..., N] in x's dtype."""
    from . import triton_gemm

    check_inputs(x, w)
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, n = x2.shape[0], w.out_features
    cfg = config or launch_config(m, w)
    if not cfg.fits(m, w):
        raise ValueError(f"launch {cfg} does not fit {m} rows of a K={k}, group {w.group_size} weight")
    atomic = cfg.split_k > 1
    y = (torch.zeros(m, n, device=x.device, dtype=torch.float32) if atomic
         else torch.empty(m, n, device=x.device, dtype=x.dtype))
    zero = w.zero if w.zero is not None else w.scale  # unused pointer when symmetric
    args = (x2, w.packed, w.scale, zero, y)
    sizes = (n, k, w.group_size, k // cfg.split_k)
    strides = (x2.stride(0), w.packed.stride(0), w.scale.stride(0), zero.stride(0), y.stride(0))
    meta = dict(BITS=w.bits, HAS_ZERO=w.zero is not None, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, ATOMIC=atomic,
                num_warps=cfg.num_warps)
    if cfg.block_m == 0:
        grid = (-(-n // cfg.block_n), cfg.split_k, m)
        triton_gemm.gemv_kernel[grid](*args, *sizes, *strides, **meta)
    else:
        grid = (-(-m // cfg.block_m) * -(-n // cfg.block_n), cfg.split_k)
        triton_gemm.gemm_kernel[grid](*args, m, *sizes, *strides, BLOCK_M=cfg.block_m, num_stages=cfg.num_stages,
                                      **meta)
    return y.to(x.dtype).reshape(*lead, n)


@torch.library.custom_op("tbq::dequant_gemm", mutates_args=(),
                         schema="(Tensor x, Tensor packed, Tensor scale, Tensor? zero, int bits, int group_size)"
                                " -> Tensor")
def dequant_gemm_op(x, packed, scale, zero, bits, group_size):
    """``dequant_gemm`` as an opaque torch op, so torch.compile (vLLM) traces around the Triton launch."""
    return dequant_gemm(x, DequantWeight(packed, scale, zero, bits, group_size, x.shape[-1]))


@dequant_gemm_op.register_fake
def _(x, packed, scale, zero, bits, group_size):
    return x.new_empty(*x.shape[:-1], packed.shape[0])
