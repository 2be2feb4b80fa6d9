"""An exported linear as the W4A4/W4A8 paths read it (``int_act``): codes as exported, scales, zero points.

``packed`` int32 [N, K*b/32] (value k of row n at bits [(k % (32/b))*b, +b) of word k // (32/b), offset binary),
``scale`` [N, groups], ``zero`` [N, groups] in the activation dtype or None (symmetric: 2^(b-1)).
Dequantisation: w[n, k] = (u[n, k] - z[n, k // group]) * scale[n, k // group].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from turboboa_export.export.pack import pack_rows

SUPPORTED_BITS = (4, 8)


@dataclass
class DequantWeight:
    """One linear's quantized weight in the kernels' layout."""

    packed: torch.Tensor  # int32 [N, K * bits / 32]
    scale: torch.Tensor  # [N, groups], activation dtype
    zero: torch.Tensor | None  # [N, groups], activation dtype; None: symmetric (2^(bits-1))
    bits: int
    group_size: int  # K for channel-wise
    in_features: int

    @property
    def out_features(self) -> int:
        return self.packed.shape[0]

    def __post_init__(self):
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"{self.bits}-bit weights are not supported by the kernels; use one of {SUPPORTED_BITS}")
        n, k, g = self.out_features, self.in_features, self.group_size
        if k % g or g % 16:
            raise ValueError(f"group size {g} must divide K={k} and be a multiple of 16")
        if tuple(self.packed.shape) != (n, k * self.bits // 32) or self.packed.dtype != torch.int32:
            raise ValueError(f"packed weight must be int32 [{n}, {k * self.bits // 32}], got "
                             f"{self.packed.dtype} {list(self.packed.shape)}")
        for name, t in (("scale", self.scale), ("zero", self.zero)):
            if t is not None and tuple(t.shape) != (n, k // g):
                raise ValueError(f"{name} must be [{n}, {k // g}], got {list(t.shape)}")

    def to(self, device: torch.device | str) -> "DequantWeight":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return DequantWeight(move(self.packed), move(self.scale), move(self.zero), self.bits, self.group_size,
                             self.in_features)


def random_weight(n: int, k: int, bits: int, group: int, asym: bool, dtype: torch.dtype, gen: torch.Generator,
                  device: str = "cpu") -> DequantWeight:
    """Uniform random codes, scales in [0.001, 0.021), zero points uniform (``asym``) or none: for tests and
    benchmarks."""
    u = torch.randint(0, 2**bits, (n, k), generator=gen)
    scale = (torch.rand(n, k // group, generator=gen) * 0.02 + 1e-3).to(dtype)
    zero = torch.randint(0, 2**bits, (n, k // group), generator=gen).to(dtype) if asym else None
    return DequantWeight(pack_rows(u, bits), scale, zero, bits, group, k).to(device)
