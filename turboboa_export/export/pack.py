"""Dense little-endian bit-stream packing of b-bit integers into int32 words (the compressed-tensors layout).

Value i of a row occupies bits [i*b, i*b + b) of the row's bit stream, least significant bit first; word j holds
stream bits [32j, 32j + 32). For b in {2, 4, 8} this is compressed-tensors' ``pack_to_int32``; for b = 3 it is the
dense layout vLLM 0.25 allocates (ceil(K*3/32) words per row).
"""

from __future__ import annotations

import math

import torch


def packed_words(count: int, bits: int) -> int:
    """int32 words for ``count`` values of ``bits`` bits: ceil(count * bits / 32)."""
    return math.ceil(count * bits / 32)


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``values`` [rows, K] (0..2^b-1) along K -> int32 [rows, ceil(K*b/32)]."""
    v = values.to(torch.int64)
    if v.numel() and (v.min() < 0 or v.max() >= 2**bits):
        raise ValueError(f"values out of range for {bits}-bit packing")
    word = _whole_value_words(v, bits) if 32 % bits == 0 else _bit_stream_words(v, bits)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)  # two's complement


def _bit_stream_words(v: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned int64 words of the little-endian bit stream (any b, values may straddle words)."""
    rows, k = v.shape
    shifts = torch.arange(bits, device=v.device)
    stream = ((v.unsqueeze(-1) >> shifts) & 1).reshape(rows, k * bits)  # bit t of value i at stream position i*b + t
    words = packed_words(k, bits)
    stream = torch.nn.functional.pad(stream, (0, words * 32 - k * bits))
    return (stream.reshape(rows, words, 32) << torch.arange(32, device=v.device)).sum(-1)


def _whole_value_words(v: torch.Tensor, bits: int) -> torch.Tensor:
    """The same words when b divides 32 (no value straddles words): word j = sum_i v[j*(32/b) + i] << (i*b)."""
    rows, k = v.shape
    per_word = 32 // bits
    words = packed_words(k, bits)
    v = torch.nn.functional.pad(v, (0, words * per_word - k)).reshape(rows, words, per_word)
    return (v << (torch.arange(per_word, device=v.device) * bits)).sum(-1)


def unpack_rows(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of ``pack_rows``: int32 [rows, words] -> int64 [rows, k] in 0..2^b-1."""
    rows, words = packed.shape
    w = packed.to(torch.int64) & 0xFFFFFFFF
    if 32 % bits == 0:  # value i of word j: bits [i*b, i*b + b)
        shifts = torch.arange(32 // bits, device=w.device) * bits
        return ((w.unsqueeze(-1) >> shifts) & (2**bits - 1)).reshape(rows, -1)[:, :k]
    stream = ((w.unsqueeze(-1) >> torch.arange(32, device=w.device)) & 1).reshape(rows, words * 32)[:, : k * bits]
    return (stream.reshape(rows, k, bits) << torch.arange(bits, device=w.device)).sum(-1)
