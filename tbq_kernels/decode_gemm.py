"""``decode_gemm``: y = x W^T for a few rows of x (M <= 16, decode) on the CUDA kernel ``csrc/decode_gemm.cu``.

The kernel is compiled with nvcc the first time it is used on a GPU model and cached (``build.compiled``); it is
called through ctypes on the current CUDA stream, so it can be captured in CUDA graphs. ``decode_gemm_op`` is the
torch custom op (``tbq::decode_gemm``) that vLLM's torch.compile traces around.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from .build import CSRC, compiled
from .decode_layout import DecodeWeight

MAX_ROWS = 16  # rows of x the kernel takes (two n8 blocks of the mma)
SOURCE = CSRC / "decode_gemm.cu"


@functools.cache
def library(capability: tuple[int, int]) -> ctypes.CDLL:
    """The compiled kernel (``SOURCE``, which benchmarks may point at a variant) for a compute capability, its entry
    point typed."""
    lib = compiled(SOURCE, capability)
    lib.tbq_decode_gemm.restype = ctypes.c_int
    lib.tbq_decode_gemm.argtypes = ([ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 7 + [ctypes.c_int] * 7
                                    + [ctypes.c_float, ctypes.c_int, ctypes.c_void_p])
    return lib


def check_inputs(x: torch.Tensor, w: DecodeWeight) -> None:
    """One-line errors for inputs the kernel cannot take."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"activations must be float16 or bfloat16, got {x.dtype}")
    if x.shape[-1] != w.in_features:
        raise ValueError(f"x has {x.shape[-1]} features but the weight expects K={w.in_features}")
    if w.scales.dtype != x.dtype or (w.zeros is not None and w.zeros.dtype != x.dtype):
        raise ValueError(f"scales/zeros are {w.scales.dtype} but x is {x.dtype}; repack with dtype={x.dtype}")
    if not (x.is_cuda and x.device == w.codes.device):
        raise ValueError("decode_gemm runs on CUDA with x and the weight on one device; use decode_gemm_ref on CPU")
    rows = x.numel() // x.shape[-1]
    if rows > MAX_ROWS:
        raise ValueError(f"decode_gemm takes at most {MAX_ROWS} rows of x, got {rows}; use a GEMM kernel for more")


def decode_gemm(x: torch.Tensor, w: DecodeWeight, act_bits: int = 0, act_clip: float = 1.0,
                max_blocks: int = 0) -> torch.Tensor:
    """y = x W^T; x [..., K] float16/bfloat16 on CUDA with at most 16 rows -> [..., N] in x's dtype, accumulated in
    float32. ``act_bits`` 4 or 8: x is first quantized per token as ``int_act.quantize_act(x, act_bits, act_clip)``
    does and y = s_x (q_x W^T) (W4A4 / W4A8). ``max_blocks`` caps the persistent blocks launched (0: one per resident
    slot; tests use small caps to make each block walk several tile groups). Raises ValueError for inputs the kernel
    cannot take, RuntimeError when the build or the launch fails."""
    check_inputs(x, w)
    if act_bits not in (0, 4, 8):
        raise ValueError(f"act_bits must be 0 (none), 4 or 8, got {act_bits}")
    if max_blocks < 0:
        raise ValueError(f"max_blocks must be >= 0 (0: one block per resident slot), got {max_blocks}")
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()
    if x2.data_ptr() % 16:  # the kernel reads x 16 bytes at a time
        x2 = x2.clone()
    m, n = x2.shape[0], w.out_features
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y.reshape(*lead, n)
    act_scale = torch.empty(m if act_bits else 0, dtype=torch.float32, device=x.device)
    lib = library(torch.cuda.get_device_capability(x.device))
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    err = lib.tbq_decode_gemm(0 if x.dtype == torch.float16 else 1, w.bits, ptr(x2), ptr(w.codes), ptr(w.hi),
                              ptr(w.scales), ptr(w.zeros), ptr(y), ptr(act_scale), m, n, k, w.padded_in_features,
                              w.group_size, w.scales.shape[1], act_bits, act_clip, max_blocks,
                              torch.cuda.current_stream(x.device).cuda_stream)
    if err:
        raise RuntimeError(f"decode_gemm launch failed with CUDA error {err}")
    return y.reshape(*lead, n)


@torch.library.custom_op("tbq::decode_gemm", mutates_args=(),
                         schema="(Tensor x, Tensor codes, Tensor? hi, Tensor scales, Tensor? zeros, int bits, "
                                "int group_size, int in_features) -> Tensor")
def decode_gemm_op(x, codes, hi, scales, zeros, bits, group_size, in_features):
    """``decode_gemm`` as an opaque torch op for torch.compile (vLLM)."""
    n = codes.shape[0] * 16
    return decode_gemm(x, DecodeWeight(codes, hi, scales, zeros, bits, group_size, n, in_features))


@decode_gemm_op.register_fake
def _(x, codes, hi, scales, zeros, bits, group_size, in_features):
    return x.new_empty(*x.shape[:-1], codes.shape[0] * 16)
