"""W4A4 / W4A8 ops (tbq_kernels.int_act): the float64 references against the run's fake quantization (what
calibration and ``tbq eval ppl`` compute), the ops against the references on fresh random inputs, boundary errors,
and (CUDA) the CUTLASS path against the reference."""

from __future__ import annotations

import os

import pytest
import torch

from tbq_kernels.int_act import check_int_gemm_inputs, int_gemm_op, quantize_act
from tbq_kernels.layout import random_weight
from tbq_kernels.reference import dequantize_ref, int_gemm_ref, quantize_act_ref
from turboboa_export.rotation.online import quantize_activations


def seed() -> int:
    s = int(os.environ.get("TBQ_KERNEL_SEED", torch.seed() % 2**31))
    print(f"TBQ_KERNEL_SEED={s}")
    return s


def outlier_rows(m: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Activations with per-row scales over three decades and a few outliers (what clipping acts on)."""
    x = torch.randn(m, k, generator=gen, dtype=torch.float64) * torch.logspace(-2, 1, m, dtype=torch.float64)[:, None]
    x[:, torch.randint(0, k, (3,), generator=gen)] *= 20
    return x


@pytest.mark.parametrize("bits,clip", [(4, 0.9), (8, 1.0), (4, 0.75)])
def test_reference_codes_are_the_fake_quantization(bits, clip):
    """s_x q of the reference equals the fake quantization the run calibrated and is evaluated with (float64); an
    all-zero row gets scale 1 and zero codes."""
    gen = torch.Generator().manual_seed(seed())
    x = outlier_rows(9, 96, gen)
    x[4] = 0
    q, s = quantize_act_ref(x, bits, clip)
    torch.testing.assert_close(q * s, quantize_activations(x, bits, clip), rtol=1e-15, atol=0)
    assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1 and torch.equal(q, q.round())
    assert s[4].item() == 1.0 and not q[4].any()


@pytest.mark.parametrize("bits,clip", [(4, 0.9), (8, 0.9)])
def test_quantize_act_matches_reference(bits, clip):
    """The float32 op gives the reference's codes and scales (a code may differ only where x / s_x lies within
    float32 rounding of a rounding boundary)."""
    gen = torch.Generator().manual_seed(seed())
    x = outlier_rows(64, 512, gen).float()
    q, s = quantize_act(x, bits, clip)
    q_ref, s_ref = quantize_act_ref(x, bits, clip)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (64, 1)
    torch.testing.assert_close(s.double(), s_ref, rtol=1e-6, atol=0)
    t = x.double() / s_ref
    boundary = (t - t.floor() - 0.5).abs() < 1e-5
    assert torch.equal(q.double()[~boundary], q_ref[~boundary]) and boundary.sum() < 5


@pytest.mark.parametrize("group", [-1, 32, 128])
@pytest.mark.parametrize("bits", [4, 8])
def test_reference_gemm_is_the_fake_quantized_linear(group, bits):
    """int_gemm_ref on the reference codes equals the run's fake-quantized linear, quantize_activations(x) @ W_hat^T,
    in float64 (W_hat the exported weight dequantized)."""
    gen = torch.Generator().manual_seed(seed())
    k, n = 256, 48
    w = random_weight(n, k, 4, k if group == -1 else group, False, torch.float64, gen)
    x = outlier_rows(7, k, gen)
    q, s = quantize_act_ref(x, bits, 0.9)
    want = quantize_activations(x, bits, 0.9) @ dequantize_ref(w).T
    torch.testing.assert_close(int_gemm_ref(q, s, w), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("group", [-1, 64, 128])
@pytest.mark.parametrize("bits", [4, 8])
def test_cpu_op_matches_reference(group, bits):
    """The op off CUDA (float64 integer sums, float32 scaling) equals the reference within float32 rounding, through
    the torch custom op vLLM calls."""
    gen = torch.Generator().manual_seed(seed())
    k, n = 384, 80
    w = random_weight(n, k, 4, k if group == -1 else group, False, torch.float16, gen)
    q, s = quantize_act_ref(outlier_rows(11, k, gen), bits, 0.9)
    q8, s32 = q.to(torch.int8), s.float()
    want = int_gemm_ref(q8, s32, w)
    got = int_gemm_op(q8, s32, w.packed, w.scale, w.group_size, torch.float32)
    assert got.dtype == torch.float32 and got.shape == (11, n)
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-6 * want.abs().max().item())


def test_boundary_errors_are_one_line():
    gen = torch.Generator().manual_seed(0)
    w = random_weight(8, 64, 4, 32, False, torch.float16, gen)
    q, s = torch.zeros(2, 64, dtype=torch.int8), torch.ones(2, 1)
    bad = [
        ((q.float(), s, w), "int8 [M, 64]"),
        ((q[:, :32], s, w), "int8 [M, 64]"),
        ((q, s.half(), w), "float32 [2, 1]"),
        ((q, s, random_weight(8, 64, 8, 32, False, torch.float16, gen)), "--bits 4 --sym"),
        ((q, s, random_weight(8, 64, 4, 32, True, torch.float16, gen)), "asymmetric"),
    ]
    for args, needle in bad:
        with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")) as e:
            check_int_gemm_inputs(*args)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="one of"):
        quantize_act(torch.ones(2, 4), 3, 0.9)


def test_custom_op_has_a_shape_only_fake_for_tracing():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, s = torch.empty(5, 256, dtype=torch.int8), torch.empty(5, 1)
        y = int_gemm_op(q, s, torch.empty(96, 32, dtype=torch.int32), torch.empty(96, 2, dtype=torch.float16), 128,
                        torch.bfloat16)
        assert y.shape == (5, 96) and y.dtype == torch.bfloat16


def test_int_codes_and_int8_weight():
    """The int8 codes times their scales equal the run's fake quantization of a float16 input (both in float32); the
    CUTLASS weight operand holds the exported codes minus 8, K-major (column-major [K, N]), scales float32 [N, 1]."""
    from tbq_kernels.int_act import int8_weight, quantize_act
    from turboboa_export.export.pack import unpack_rows

    gen = torch.Generator().manual_seed(seed())
    x = outlier_rows(6, 128, gen).half()
    q, s = quantize_act(x, 4, 0.9)
    assert q.dtype == torch.int8 and torch.equal((q.float() * s).half(), quantize_activations(x, 4, 0.9))
    w = random_weight(40, 128, 4, 128, False, torch.float16, gen)
    w8, s_w = int8_weight(w)
    assert w8.shape == (128, 40) and w8.stride() == (1, 128) and w8.dtype == torch.int8
    assert torch.equal(w8.t().long(), unpack_rows(w.packed, 4, 128) - 8)
    assert s_w.dtype == torch.float32 and torch.equal(s_w, w.scale.float())
    with pytest.raises(ValueError, match="channel-wise"):
        int8_weight(random_weight(40, 128, 4, 64, False, torch.float16, gen))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cutlass_path_matches_reference_on_cuda(dtype):
    """The plugin's channel-wise CUDA path (per-token codes, CUTLASS int8 scaled-mm) within fp16/bf16 rounding of the
    float64 reference on the same codes, act bits 4 and 8, M from 1 to 300; needs vLLM (skips where it is not)."""
    pytest.importorskip("vllm")
    from tbq_kernels.int_act import int8_weight, int_linear_cutlass

    gen = torch.Generator().manual_seed(seed())
    for n, k in ((192, 576), (4096, 4096), (4096, 14336)):
        w = random_weight(n, k, 4, k, False, dtype, gen).to("cuda")
        w8, s_w = int8_weight(w)
        for m in (1, 7, 16, 33, 300):
            for bits in (4, 8):
                x = outlier_rows(m, k, gen).to("cuda", dtype)
                q, s = quantize_act(x, bits, 0.9)
                got = int_linear_cutlass(q, s, w8, s_w, dtype).cpu().double()
                want = int_gemm_ref(q, s, w)
                assert torch.isfinite(got).all()
                err = ((got - want).abs() / want.abs().amax(1, keepdim=True)).max().item()
                assert err < 1e-2, (n, k, m, bits, err)
