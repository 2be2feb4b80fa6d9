"""Dequant-GEMM kernels: the plain-torch reference against explicit loops, the load-time repack against the
exporter's own read-back, boundary checks, and (CUDA) the kernels against the reference on fresh random inputs.
No Triton-interpreter test: CPU-only torch ships no Triton, and where Triton is (3.6 on the GPU machines) its
interpreter fails on the GEMV kernel (``TypeError: only 0-dimensional arrays can be converted to Python scalars``)."""

from __future__ import annotations

import os

import pytest
import torch

from tbq_kernels import DequantWeight, dequant_gemm, dequant_gemm_ref, from_compressed_tensors
from tbq_kernels.layout import random_weight
from tbq_kernels.ops import GEMV_MAX_ROWS, check_inputs, dequant_gemm_op, launch_config
from tbq_kernels.reference import dequantize_ref
from turboboa_export.algorithms.quantized import QuantizedWeight
from turboboa_export.export.compressed_tensors import dequantize_exported, linear_tensors
from turboboa_export.export.pack import pack_rows


@pytest.mark.parametrize("bits,group,asym", [(4, 16, False), (4, 32, True), (8, 64, False), (8, 16, True)])
def test_reference_equals_explicit_loops(bits, group, asym):
    gen = torch.Generator().manual_seed(bits * 100 + group)
    n, k = 6, 64
    u = torch.randint(0, 2**bits, (n, k), generator=gen)
    scale = torch.rand(n, k // group, generator=gen, dtype=torch.float64)
    zero = torch.randint(0, 2**bits, (n, k // group), generator=gen).double() if asym else None
    w = DequantWeight(pack_rows(u, bits), scale, zero, bits, group, k)
    x = torch.randn(3, k, generator=gen, dtype=torch.float64)
    want = torch.zeros(3, n, dtype=torch.float64)
    for m in range(3):
        for j in range(n):
            for c in range(k):
                z = zero[j, c // group] if asym else 2 ** (bits - 1)
                want[m, j] += x[m, c] * (u[j, c] - z) * scale[j, c // group]
    assert torch.allclose(dequant_gemm_ref(x, w), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bits,asym", [(4, False), (4, True), (8, True)])
def test_load_time_repack_reads_what_the_exporter_wrote(bits, asym):
    gen = torch.Generator().manual_seed(7 + bits)
    n, k, group = 24, 128, 32
    codes = torch.randint(0, 2**bits, (n, k), generator=gen)
    scale = torch.rand(n, k // group, generator=gen) + 0.1
    zero = (torch.randint(0, 2**bits, (n, k // group), generator=gen) if asym
            else torch.full((n, k // group), 2 ** (bits - 1)))
    q = QuantizedWeight(codes=codes, scale=scale, zero=zero, g_idx=torch.arange(k) // group)
    t = linear_tensors("l", q, bits, sym=not asym, dtype=torch.float16)
    w = from_compressed_tensors(t["l.weight_packed"], t["l.weight_scale"], bits, t.get("l.weight_zero_point"))
    assert (w.zero is not None) == asym and w.group_size == group and w.in_features == k
    assert torch.equal(dequantize_ref(w), dequantize_exported(t, "l", bits).double())


def test_boundary_errors_are_one_line():
    gen = torch.Generator().manual_seed(0)
    w = random_weight(32, 128, 4, 64, False, torch.float16, gen)
    cases = [(torch.randn(2, 128), "float16 or bfloat16"), (torch.randn(2, 96).half(), "K=128"),
             (torch.randn(2, 128).bfloat16(), "dtype=torch.bfloat16")]
    for x, words in cases:
        with pytest.raises(ValueError, match=words):
            check_inputs(x, w)
    with pytest.raises(ValueError, match="group size 48"):
        DequantWeight(w.packed, w.scale, None, 4, 48, 128)
    with pytest.raises(ValueError, match="3-bit"):
        DequantWeight(w.packed, w.scale, None, 3, 64, 128)
    with pytest.raises(ValueError, match="int32"):
        DequantWeight(w.packed[:, :8], w.scale, None, 4, 64, 128)


def test_launch_configs_tile_k_within_groups():
    gen = torch.Generator().manual_seed(0)
    for group in (32, 64, 128, 4096):
        w = random_weight(64, 4096, 4, group, False, torch.float16, gen)
        for m in (1, GEMV_MAX_ROWS, 16, 64, 256, 2048):
            cfg = launch_config(m, w)
            assert group % cfg.block_k == 0 and 4096 % (cfg.block_k * cfg.split_k) == 0, (group, m, cfg)
            assert (cfg.block_m == 0) == (m <= GEMV_MAX_ROWS)


def test_custom_op_has_a_shape_only_fake_for_tracing():
    from torch._subclasses.fake_tensor import FakeTensorMode

    gen = torch.Generator().manual_seed(0)
    w = random_weight(48, 256, 4, 128, True, torch.float16, gen)
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.randn(2, 5, 256).half())
        y = dequant_gemm_op(x, *(mode.from_tensor(t) for t in (w.packed, w.scale, w.zero)), 4, 128)
    assert y.shape == (2, 5, 48) and y.dtype == torch.float16


def test_tuned_table_is_used_only_where_it_fits(tmp_path, monkeypatch):
    from tbq_kernels import ops

    monkeypatch.setattr(ops, "TUNED", tmp_path / "tuned.json")
    ops.tuned_table.cache_clear()
    gen = torch.Generator().manual_seed(0)
    w = random_weight(64, 1024, 4, 128, False, torch.float16, gen)
    good, misfit = ops.LaunchConfig(0, 16, 64, 8, 2), ops.LaunchConfig(0, 16, 256, 1, 2)  # 256 > group 128
    ops.record_tuned({ops.tuned_key(1, w): good, ops.tuned_key(16, w): misfit})
    try:
        assert launch_config(1, w) == good
        assert launch_config(16, w) == ops.heuristic_config(16, w)
        assert launch_config(3, w) == ops.heuristic_config(3, w)  # m=3 looks up the m4 entry: none
    finally:
        ops.tuned_table.cache_clear()


CASES = [  # m, n, k, bits, group, asym, dtype
    (1, 96, 256, 4, 128, False, torch.float16), (3, 64, 512, 4, 64, True, torch.bfloat16),
    (1, 64, 512, 8, 512, False, torch.float16), (16, 64, 256, 4, 256, True, torch.float16),
    (40, 130, 256, 8, 64, True, torch.bfloat16), (300, 128, 128, 4, 32, False, torch.float16),
]


def kernel_seed() -> int:
    """Fresh inputs each run (a new seed), or the seed in TBQ_KERNEL_SEED to replay a failure."""
    return int(os.environ.get("TBQ_KERNEL_SEED") or int.from_bytes(os.urandom(2), "little"))


def check_against_reference(device: str) -> None:
    seed = kernel_seed()
    replay = f"TBQ_KERNEL_SEED={seed}"  # in every failure message
    gen = torch.Generator().manual_seed(seed)
    for m, n, k, bits, group, asym, dtype in CASES:
        w = random_weight(n, k, bits, group, asym, dtype, gen, device)
        x = torch.randn(m, k, generator=gen).to(dtype).to(device)
        got, want = dequant_gemm(x, w).double().cpu(), dequant_gemm_ref(x, w).double().cpu()
        rel = float((got - want).norm() / want.norm())
        assert not got.isnan().any() and rel < 1e-2, (replay, m, n, k, bits, group, asym, dtype, rel)
        as_op = dequant_gemm_op(x, w.packed, w.scale, w.zero, bits, group).double().cpu()  # the vLLM plugin's call
        # split-K float32 atomics: not bit-reproducible
        assert float((as_op - want).norm() / want.norm()) < 1e-2, (replay, m, n, k, bits, group, asym, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernels_match_reference_on_cuda():
    check_against_reference("cuda")
    gen = torch.Generator().manual_seed(1)
    for n, k in ((4096, 4096), (1024, 4096), (11008, 4096), (4096, 14336)):  # Llama linear shapes
        for group in (128, k):
            w = random_weight(n, k, 4, group, False, torch.float16, gen, "cuda")
            for m in (1, 4, 16, 64, 256):
                x = torch.randn(m, k, generator=gen).half().cuda()
                got, want = dequant_gemm(x, w).double().cpu(), dequant_gemm_ref(x, w).double().cpu()
                assert float((got - want).norm() / want.norm()) < 1e-2, (n, k, group, m)
