"""``reference.dequantize_ref`` (the weights behind the W4A4/W4A8 references) against explicit loops."""

from __future__ import annotations

import pytest
import torch

from tbq_kernels.layout import DequantWeight
from tbq_kernels.reference import dequantize_ref
from turboboa_export.export.pack import pack_rows


@pytest.mark.parametrize("bits,group,asym", [(4, 16, False), (4, 32, True), (8, 64, False), (8, 16, True)])
def test_dequantize_ref_equals_explicit_loops(bits, group, asym):
    """(u - z) s per group from the packed codes: catches a wrong unpack order, group index or default zero point."""
    gen = torch.Generator().manual_seed(bits * 100 + group)
    n, k = 6, 64
    u = torch.randint(0, 2**bits, (n, k), generator=gen)
    scale = torch.rand(n, k // group, generator=gen, dtype=torch.float64)
    zero = torch.randint(0, 2**bits, (n, k // group), generator=gen).double() if asym else None
    w = DequantWeight(pack_rows(u, bits), scale, zero, bits, group, k)
    want = torch.zeros(n, k, dtype=torch.float64)
    for j in range(n):
        for c in range(k):
            z = zero[j, c // group] if asym else 2 ** (bits - 1)
            want[j, c] = (u[j, c] - z) * scale[j, c // group]
    assert torch.equal(dequantize_ref(w), want)
