"""The online Hadamard of a W4A4/W4A8 layer's input fused with the per-token quantization of its output: x [T, n]
(float16/bfloat16) -> int8 codes q [T, n] and float32 scales s_x [T, 1] of y = x H, the input read once and the codes
written once (the two-pass transform, ``tbq::hadamard_mix`` then Hadacore, wrote y in x's dtype and read it back
twice, then once more to quantize).

H is the full online Hadamard H_n = (H_m kron S_p) / sqrt(n) of ``turboboa_export.rotation.hadamard`` (``base_t`` =
H_m^T / sqrt(m)) or the block-diagonal I_{n/p} kron S_p / sqrt(p) (``base_t`` None); the codes are those of
``turboboa_export.rotation.online.activation_codes``: s_x = clip max_k |y_k| / (2^(b-1) - 1), q = clamp(round(y / s_x),
-2^(b-1), 2^(b-1) - 1). On CUDA the kernel ``csrc/hadamard_quant.cu`` runs one block per token: S_p by butterflies
(in registers and warp shuffles), the order-m mix on the tensor cores (tf32), the codes from shared memory. Elsewhere,
and for shapes the kernel is not built for (:func:`kernel_plan`), float32 torch.
"""

from __future__ import annotations

import ctypes
import functools
import math

import torch

from turboboa_export.rotation.hadamard import apply_online_rotation, kron_transform

from .build import CSRC, compiled
from .int_act import act_qmax, quantize_act

ORDERS = (64, 128, 256, 512, 1024)  # Sylvester orders p the kernel is built for
PADDED_ROWS = (16, 32, 64)  # the mix's rows m, padded to one of these (tensor-core tiles of 16)


STATIC_SHARED = 4 * 8  # the kernel's static shared memory: one float per warp for the block's max reduction


def shared_bytes(m: int, padded: int, p: int) -> int:
    """Shared memory of one block (as csrc/hadamard_quant.cu allocates it): the token's m rows in float32, P + 40
    words apart, the padded sign matrix (padded x (padded + 4) words; 0 without the mix) and the static reduction
    buffer (the device's opt-in limit counts both)."""
    return 4 * (m * (p + 40) + padded * (padded + 4)) + STATIC_SHARED


def kernel_plan(n: int, base_t: torch.Tensor | None, p: int, max_shared: int) -> int | None:
    """The padded row count the CUDA kernel runs an n-wide input with (0: no mix, block-diagonal or m = 1), or None
    where it is not built for it: p in :data:`ORDERS`, m = n / p rows at most 64 when mixed, :func:`shared_bytes`
    within ``max_shared`` (the device's opt-in limit per block, bytes). ValueError when ``base_t`` is not [m, m]."""
    if p not in ORDERS or n % p:
        return None
    m = n // p
    if base_t is not None and tuple(base_t.shape) != (m, m):
        raise ValueError(f"base must be [{m}, {m}] for n={n}, p={p}, got {list(base_t.shape)}")
    padded = 0 if base_t is None else next((r for r in PADDED_ROWS if r >= m), None)
    if padded is None or shared_bytes(m, padded, p) > max_shared:
        return None
    return padded


def device_shared(device: torch.device) -> int:
    """The opt-in shared memory per block of a CUDA device, bytes (H100/H200: 227 KiB; sm86/sm89: 99 KiB)."""
    return torch.cuda.get_device_properties(device).shared_memory_per_block_optin


def fusable(n: int, base_t: torch.Tensor | None, p: int, device: torch.device) -> bool:
    """Whether :func:`hadamard_quant` runs fused on ``device`` for this transform: always off CUDA (the float32 torch
    path is the portable one), on CUDA where :func:`kernel_plan` allows (elsewhere serving keeps the two-pass
    transform in the activations' dtype, then the codes)."""
    return device.type != "cuda" or kernel_plan(n, base_t, p, device_shared(device)) is not None


def transform_torch(x: torch.Tensor, base_t: torch.Tensor | None, p: int) -> torch.Tensor:
    """y = x H -> float32 [T, n] for x [T, n] (any float dtype and device; ``base_t`` float32 [m, m] or None as in
    :func:`hadamard_quant`): ``rotation.hadamard``'s butterflies in float32, :func:`hadamard_quant`'s fallback."""
    if base_t is None:
        return apply_online_rotation(x.float(), p)
    return kron_transform(x.float(), base_t)


@functools.cache
def library(capability: tuple[int, int]) -> ctypes.CDLL:
    """``csrc/hadamard_quant.cu`` compiled for a compute capability, its entry point typed."""
    lib = compiled(CSRC / "hadamard_quant.cu", capability)
    lib.tbq_hadamard_quant.restype = ctypes.c_int
    lib.tbq_hadamard_quant.argtypes = ([ctypes.c_int, ctypes.c_void_p, ctypes.c_longlong, ctypes.c_void_p]
                                       + [ctypes.c_int] * 4 + [ctypes.c_void_p] * 2 + [ctypes.c_float] * 3
                                       + [ctypes.c_void_p])
    return lib


def hadamard_quant(x: torch.Tensor, base_t: torch.Tensor | None, p: int, bits: int,
                   clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and scales of y = x H per token: x [T, n] float16/bfloat16/float32, ``base_t`` H_m^T / sqrt(m) [m, m]
    float32 on x's device with entries +-1/sqrt(m) (n = m p; None: block-diagonal Sylvester blocks of p), ``bits`` 4
    or 8, ``clip`` in (0, 1] -> (q int8 [T, n], s_x float32 [T, 1]). The CUDA kernel for fp16/bf16 where
    :func:`kernel_plan` allows, float32 torch elsewhere. ValueError for a bad width, dtype or shape; RuntimeError when
    the build or the launch fails."""
    qmax = act_qmax(bits)
    if not 0 < clip <= 1:
        raise ValueError(f"the activation clip ratio must be in (0, 1], got {clip}")
    if x.dim() != 2 or x.shape[1] % p:
        raise ValueError(f"x must be [T, n] with n a multiple of p={p}, got {list(x.shape)}")
    m = x.shape[1] // p
    if base_t is not None and (base_t.dtype != torch.float32 or base_t.device != x.device or
                               tuple(base_t.shape) != (m, m)):
        raise ValueError(f"base must be float32 [{m}, {m}] on {x.device}, got {base_t.dtype} {list(base_t.shape)} "
                         f"on {base_t.device}")
    padded = (kernel_plan(x.shape[1], base_t, p, device_shared(x.device))
              if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) else None)
    if padded is None:
        return quantize_act(transform_torch(x, base_t, p), bits, clip)
    t, n = x.shape
    if x.stride(1) != 1 or (x.stride(0) * x.element_size()) % 16:  # the kernel loads rows 16 bytes at a time
        x = x.contiguous()
    if x.data_ptr() % 16:
        x = x.clone()
    q = torch.empty(t, n, dtype=torch.int8, device=x.device)
    s = torch.empty(t, 1, dtype=torch.float32, device=x.device)
    if t:
        base = base_t.contiguous() if base_t is not None else None
        norm = 1 / math.sqrt(n if base_t is not None else p)
        with torch.cuda.device(x.device):  # the launch sets the kernel's shared-memory limit for the current device
            err = library(torch.cuda.get_device_capability(x.device)).tbq_hadamard_quant(
                0 if x.dtype == torch.float16 else 1, x.data_ptr(), x.stride(0),
                None if base is None else base.data_ptr(), m, p, padded, t, q.data_ptr(), s.data_ptr(), norm, clip,
                float(qmax), torch.cuda.current_stream(x.device).cuda_stream)
        if err:
            raise RuntimeError(f"hadamard_quant launch failed with CUDA error {err}")
    return q, s


@torch.library.custom_op("tbq::hadamard_quant", mutates_args=(),
                         schema="(Tensor x, Tensor? base_t, int p, int bits, float clip) -> (Tensor, Tensor)")
def hadamard_quant_op(x, base_t, p, bits, clip):
    """:func:`hadamard_quant` as an opaque torch op, so torch.compile (vLLM) traces around the launch."""
    return hadamard_quant(x, base_t, p, bits, clip)


@hadamard_quant_op.register_fake
def _(x, base_t, p, bits, clip):
    return (torch.empty(x.shape, dtype=torch.int8, device=x.device),
            torch.empty(x.shape[0], 1, dtype=torch.float32, device=x.device))
