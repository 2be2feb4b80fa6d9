"""The decode kernel's weight layout: codes in the tensor cores' A-fragment order, made once at load time.

``csrc/decode_gemm.cu`` multiplies 16 output channels x 16 inputs of W at a time with ``mma.sync.m16n8k16``, W as the
A operand. Lane l of a warp (g = l // 4, t = l % 4) holds eight values of each such tile (PTX ISA, the m16n8k16 A
fragment): value i at row g + 8 * ((i // 2) % 2), column 2 t + (i % 2) + 8 * (i // 4), the columns being inputs
permuted inside each 32 (``mma_columns``) so that a lane's activations are contiguous. The layout stores, per 16-row
tile, per 128 inputs (eight k-tiles) and per lane, those 64 codes contiguously, so that a lane reads them with
16-byte loads. They are kept as 32 pairs (a_2j, a_2j+1) per lane (pair 4 t' + j of k-tile t'); each 32-bit word holds
16 / b pairs, pair s of a word with its first value at bits [s b, s b + b) and its second at [16 + s b, 16 + s b + b),
so that one shift and mask put both in the low bits of a 16-bit half. 3-bit codes are two planes: their low two bits
as 2-bit codes, their third bit as 1-bit codes (16 pairs a word). Scales and zero points per group are stored
[N/16, groups, 16] (the 16 rows of a tile innermost). K is padded to a multiple of 128 with code 0 and zero scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from turboboa_export.export.pack import unpack_rows

KSTEP = 128  # inputs per lane load
DECODE_BITS = (2, 3, 4, 8)


@dataclass
class DecodeWeight:
    """One linear in the decode kernel's layout (see the module docstring)."""

    codes: torch.Tensor  # int32 [N/16, K_pad/128, 32, 2 b'] (b' = 2 for b = 3, else b)
    hi: torch.Tensor | None  # int32 [N/16, K_pad/128, 32, 2]: the third bit of 3-bit codes; None otherwise
    scales: torch.Tensor  # [N/16, groups_pad, 16] activation dtype
    zeros: torch.Tensor | None  # like scales, zero points; None: symmetric (2^(b-1))
    bits: int
    group_size: int  # K for per-channel
    out_features: int
    in_features: int

    @property
    def padded_in_features(self) -> int:
        return self.codes.shape[1] * KSTEP

    def to(self, device: torch.device | str) -> "DecodeWeight":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return DecodeWeight(move(self.codes), move(self.hi), move(self.scales), move(self.zeros), self.bits,
                            self.group_size, self.out_features, self.in_features)


def check_decode_shape(n: int, k: int, bits: int, group_size: int) -> str | None:
    """Why the decode kernel cannot take an N x K weight with these bits and groups (None: it can)."""
    if bits not in DECODE_BITS:
        return f"{bits}-bit weights: the decode kernel takes {DECODE_BITS}"
    if n % 16:
        return f"N={n} is not a multiple of 16"
    if k % 32:
        return f"K={k} is not a multiple of 32"
    if group_size != k and group_size not in (32, 64) and group_size % KSTEP:
        return f"group size {group_size}: the decode kernel takes 32, 64, multiples of 128 or per-channel"
    if k % group_size:
        return f"group size {group_size} does not divide K={k}"
    return None


def mma_columns(u: torch.Tensor) -> torch.Tensor:
    """[..., K] (K a multiple of 32) -> the same columns in the order the kernel's mma k index runs: in each 32-input
    chunk, mma column 16 h + 8 c + 2 t + e (k-tile h of the chunk) is input 8 t + 4 h + 2 c + e, so that lane t's
    B fragments of both k-tiles are x's eight contiguous inputs [8 t, 8 t + 8): one 16-byte load. (A permutation of
    k applied to W's columns and x alike leaves x W^T unchanged.)"""
    v = u.reshape(*u.shape[:-1], -1, 4, 2, 2, 2)  # chunk, t, h, c, e
    return v.movedim(-4, -2).reshape(u.shape)  # chunk, h, c, t, e


def fragment_order(u: torch.Tensor) -> torch.Tensor:
    """Codes u [N, K_pad] -> [N/16, K_pad/128, 32 lanes, 32 pairs, 2]: pair 4 t' + j of a lane is its A-fragment
    values (a_2j, a_2j+1) of k-tile t' (row = 16 nt + 8 r + g, mma column = 16 kt + 8 c + 2 t + e; value
    i = 4 c + 2 r + e), the mma columns being ``mma_columns`` of the inputs."""
    n, k = u.shape
    v = mma_columns(u).reshape(n // 16, 2, 8, k // 16, 2, 4, 2)  # nt, r, g, kt, c, t, e
    v = v.permute(0, 3, 2, 5, 4, 1, 6)  # nt, kt, g, t, c, r, e: lane = 4 g + t, value i = 4 c + 2 r + e
    v = v.reshape(n // 16, k // KSTEP, 8, 32, 8)  # nt, step, k-tile in step, lane, value
    return v.permute(0, 1, 3, 2, 4).reshape(n // 16, k // KSTEP, 32, 32, 2)


def pack_pairs(pairs: torch.Tensor, bits: int) -> torch.Tensor:
    """[..., 32 pairs, 2] codes of ``bits`` bits -> int32 [..., 2 bits] words: 16 / bits pairs a word, pair s at bits
    s*bits (first value) and 16 + s*bits (second)."""
    per_word = 16 // bits
    p = pairs.to(torch.int64).reshape(*pairs.shape[:-2], 32 // per_word, per_word, 2)
    shift = torch.arange(per_word) * bits
    word = ((p[..., 0] << shift) | (p[..., 1] << (shift + 16))).sum(-1)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def group_rows(t: torch.Tensor, groups_pad: int) -> torch.Tensor:
    """Per-group tensor [N, groups] -> [N/16, groups_pad, 16], padded with zeros."""
    n, groups = t.shape
    t = torch.nn.functional.pad(t, (0, groups_pad - groups))
    return t.reshape(n // 16, 16, groups_pad).transpose(1, 2).contiguous()


def repack(u: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int, group_size: int,
           dtype: torch.dtype) -> DecodeWeight:
    """Codes u [N, K] (0..2^b-1), scale [N, K/group] and zero points [N, K/group] (None: symmetric) -> the decode
    layout, scales and zeros in ``dtype``. Raises ValueError (``check_decode_shape``'s reason) for shapes the kernel
    cannot take."""
    n, k = u.shape
    why = check_decode_shape(n, k, bits, group_size)
    if why:
        raise ValueError(why)
    k_pad = -(-k // KSTEP) * KSTEP
    groups_pad = -(-k_pad // group_size)
    pairs = fragment_order(torch.nn.functional.pad(u.to(torch.int64), (0, k_pad - k)))
    if bits == 3:
        codes, hi = pack_pairs(pairs & 3, 2), pack_pairs(pairs >> 2, 1)
    else:
        codes, hi = pack_pairs(pairs, bits), None
    zeros = None if zero is None else group_rows(zero.to(dtype), groups_pad)
    return DecodeWeight(codes.contiguous(), hi if hi is None else hi.contiguous(), group_rows(scale.to(dtype), groups_pad),
                        zeros, bits, group_size, n, k)


def from_compressed_tensors(weight_packed: torch.Tensor, weight_scale: torch.Tensor, bits: int,
                            in_features: int, weight_zero_point: torch.Tensor | None = None,
                            dtype: torch.dtype | None = None) -> DecodeWeight:
    """The load-time repack of one exported linear (``weight_packed`` int32 [N, ceil(K b/32)], ``weight_scale``
    [N, groups], ``weight_zero_point`` int32 [ceil(N b/32), groups] packed along N, or None)."""
    n, groups = weight_scale.shape
    u = unpack_rows(weight_packed.cpu(), bits, in_features)
    zero = None
    if weight_zero_point is not None:
        zero = unpack_rows(weight_zero_point.cpu().T.contiguous(), bits, n).T
    w = repack(u, weight_scale.cpu(), zero, bits, in_features // groups, dtype or weight_scale.dtype)
    return w.to(weight_packed.device)
