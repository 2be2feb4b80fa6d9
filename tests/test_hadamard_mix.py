"""The order-m mix of the full online Hadamard (tbq_kernels.hadamard_mix): CPU path and (CUDA) the Triton kernel
against the float64 reference, and with the Sylvester part equal to the explicit H_n."""

from __future__ import annotations

import pytest
import torch

from tbq_kernels.hadamard_mix import check_mix_inputs, hadamard_mix, hadamard_mix_op, hadamard_mix_ref
from turboboa_export.rotation.hadamard import base_matrix, factor, hadamard_matrix, sylvester_transform


def test_reference_composes_to_the_explicit_matrix():
    """Mix (reference) then the Sylvester butterflies = x @ H_n, float64, n = 12 * 64 (independent of the kernel)."""
    n = 768
    m, p = factor(n)
    x = torch.randn(5, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = hadamard_mix_ref(x.reshape(5, m, p), base_matrix(m).T.contiguous())
    got = sylvester_transform(y).reshape(5, n)
    torch.testing.assert_close(got, x @ hadamard_matrix(n), rtol=0, atol=1e-12)


def test_cpu_path_and_op_match_reference():
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(3, 12, 32, generator=gen)
    b = base_matrix(12).T.contiguous().float()
    torch.testing.assert_close(hadamard_mix_op(y, b).double(), hadamard_mix_ref(y, b), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"need y \[T, m, p\]"):
        check_mix_inputs(y, b[:4, :4].contiguous())
    with pytest.raises(ValueError, match="contiguous"):
        check_mix_inputs(y, b.T)
    with pytest.raises(ValueError, match="share dtype"):
        check_mix_inputs(y, b.double())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_mix_matches_reference_on_cuda(dtype):
    """m from 12 to 344 (padded rows), p from 8 to 512, T from 0 to 3000; strided input (a column slice)."""
    gen = torch.Generator().manual_seed(3)
    for m, p in ((28, 512), (12, 64), (344, 32), (44, 8), (20, 256)):
        b = base_matrix(m).T.contiguous().to("cuda", dtype)
        for t in (0, 1, 16, 129, 3000):
            wide = torch.randn(t, m * p + 16, generator=gen).to("cuda", dtype)
            y = wide[:, 16:].reshape(t, m, p)
            got = hadamard_mix(y, b)
            assert got.is_contiguous() and got.shape == y.shape
            if t:
                want = hadamard_mix_ref(y, b)
                err = float((got.double().cpu() - want).abs().max() / want.abs().max())
                assert err < (1e-2 if dtype == torch.bfloat16 else 2e-3), (m, p, t, err)
