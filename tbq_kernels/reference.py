"""Plain-torch float64 definitions of what the kernels compute: the references every kernel is tested against."""

from __future__ import annotations

import torch

from turboboa_export.algorithms.grid import dequantize
from turboboa_export.export.pack import unpack_rows

from .decode_layout import KSTEP, DecodeWeight
from .layout import DequantWeight


def dequantize_ref(w: DequantWeight) -> torch.Tensor:
    """W [N, K] in float64: (u - z) * scale per group."""
    u = unpack_rows(w.packed.cpu(), w.bits, w.in_features).double()
    per_column = lambda t: t.cpu().double().repeat_interleave(w.group_size, 1)  # noqa: E731  [N, groups] -> [N, K]
    zero = torch.full_like(u, 2.0 ** (w.bits - 1)) if w.zero is None else per_column(w.zero)
    return dequantize(u, per_column(w.scale), zero)


def quantize_act_ref(x: torch.Tensor, bits: int, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric codes of x [M, K] in float64: (q [M, K] integers in [-2^(b-1), 2^(b-1) - 1] as float64,
    s_x [M, 1]) with s_x = clip max|x| / (2^(b-1) - 1), 1 where a row is all zeros."""
    qmax = 2 ** (bits - 1) - 1
    xd = x.cpu().double()
    s = clip * xd.abs().amax(-1, keepdim=True) / qmax
    s[s == 0] = 1.0
    return torch.clamp(torch.round(xd / s), -qmax - 1, qmax), s


def hadamard_quant_ref(x: torch.Tensor, h: torch.Tensor, bits: int, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and scales of y = x @ h per token in float64: x [T, n], h [n, n] the explicit rotation; as
    :func:`quantize_act_ref` of y."""
    return quantize_act_ref(x.cpu().double() @ h.cpu().double(), bits, clip)


def int_gemm_ref(q: torch.Tensor, s_x: torch.Tensor, w: DequantWeight) -> torch.Tensor:
    """y[m, n] = s_x[m] sum_k q[m, k] (u[n, k] - 8) s_w[n, g(k)] in float64, for symmetric 4-bit ``w``; q [M, K]."""
    return (q.cpu().double() @ dequantize_ref(w).T) * s_x.cpu().double()


def decode_codes_ref(w: DecodeWeight) -> torch.Tensor:
    """The codes [N, K] (int64) held in the decode layout, read back: the inverse of ``decode_layout.repack``."""
    def unpack_pairs(words: torch.Tensor, bits: int) -> torch.Tensor:  # [..., words] -> [..., 32 pairs, 2]
        shift = torch.arange(16 // bits) * bits
        x = words.to(torch.int64).unsqueeze(-1) & 0xFFFFFFFF
        pairs = torch.stack(((x >> shift) & (2**bits - 1), (x >> (shift + 16)) & (2**bits - 1)), -1)
        return pairs.reshape(*words.shape[:-1], 32, 2)

    pairs = unpack_pairs(w.codes.cpu(), 2 if w.bits == 3 else w.bits)
    if w.bits == 3:
        pairs = pairs | (unpack_pairs(w.hi.cpu(), 1) << 2)
    nt, steps = pairs.shape[:2]
    v = pairs.reshape(nt, steps, 32, 8, 8).permute(0, 1, 3, 2, 4)  # nt, step, k-tile, lane, value
    v = v.reshape(nt, steps * 8, 8, 4, 2, 2, 2)  # nt, kt, g, t, c, r, e
    u = v.permute(0, 5, 2, 1, 4, 3, 6).reshape(nt * 16, steps * KSTEP)  # row = 16 nt + 8 r + g; col = 16 kt + 8 c + 2 t + e
    # mma column 16 h + 8 c + 2 t + e of each 32-chunk is input 8 t + 4 h + 2 c + e
    u = u.reshape(nt * 16, -1, 2, 2, 4, 2).permute(0, 1, 4, 2, 3, 5).reshape(nt * 16, steps * KSTEP)
    return u[:, : w.in_features]


def decode_gemm_ref(x: torch.Tensor, w: DecodeWeight) -> torch.Tensor:
    """y = x W^T in float64 for a weight in the decode layout, W = (u - z) * scale per group; x [..., K] -> [..., N]
    in x's dtype and device."""
    k = w.in_features
    per_column = lambda t: t.cpu().double().transpose(1, 2).reshape(w.out_features, -1).repeat_interleave(  # noqa: E731
        w.group_size, 1)[:, :k]  # [N/16, groups, 16] -> [N, K]
    u = decode_codes_ref(w).double()
    zero = torch.full_like(u, 2.0 ** (w.bits - 1)) if w.zeros is None else per_column(w.zeros)
    y = x.cpu().double() @ dequantize(u, per_column(w.scales), zero).T
    return y.to(dtype=x.dtype, device=x.device)
