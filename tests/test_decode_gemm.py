"""The decode kernel's layout (CPU) and the kernel itself against its float64 reference (CUDA; skipped without it)."""

from __future__ import annotations

import pytest
import torch

from tbq_kernels.decode_layout import check_decode_shape, from_compressed_tensors, repack
from tbq_kernels.reference import decode_codes_ref, decode_gemm_ref
from turboboa_export.export.pack import pack_rows

CASES = [(2, 32), (3, 64), (4, 128), (8, 128), (4, -1), (3, -1), (2, 256)]


def random_codes(n: int, k: int, bits: int, group: int, asym: bool, gen: torch.Generator):
    group = k if group == -1 else group
    u = torch.randint(0, 2**bits, (n, k), generator=gen)
    scale = torch.rand(n, k // group, generator=gen) * 0.02 + 1e-3
    zero = torch.randint(0, 2**bits, (n, k // group), generator=gen) if asym else None
    return u, scale, zero, group


def fragment_value(w, row: int, col: int) -> int:
    """Code (row, col) read from the layout word by word, as the PTX ISA's m16n8k16 A fragment places it: input col
    is mma column 16 h + 8 c + 2 t + e of its 32-chunk when col % 32 = 8 t + 4 h + 2 c + e (lane t's activations
    contiguous); lane 4 g + t holds (g + 8 r, 2 t + e + 8 c) as value i = 4 c + 2 r + e; pair j = i // 2 of k-tile
    t' is pair 4 t' + j of the lane's 128-input step; word pair // (16 / b), slot pair % (16 / b), second value 16
    bits up."""
    i32 = col % 32
    col = col - i32 + 16 * (i32 % 8 // 4) + 8 * (i32 % 4 // 2) + 2 * (i32 // 8) + i32 % 2
    nt, r16, kt, c16 = row // 16, row % 16, col // 16, col % 16
    g, r = r16 % 8, r16 // 8
    t, e, c = (c16 % 8) // 2, c16 % 2, c16 // 8
    lane, i = 4 * g + t, 4 * c + 2 * r + e
    step, pair = kt // 8, 4 * (kt % 8) + i // 2

    def read(words, bits):
        per_word = 16 // bits
        word = int(words[nt, step, lane, pair // per_word]) & 0xFFFFFFFF
        return (word >> (16 * (i % 2) + bits * (pair % per_word))) & (2**bits - 1)

    return read(w.codes, 2) | (read(w.hi, 1) << 2) if w.bits == 3 else read(w.codes, w.bits)


@pytest.mark.parametrize("bits,group", CASES)
def test_layout_places_codes_as_the_mma_fragment(bits, group):
    """Every code sits where the m16n8k16 A fragment wants it (sampled positions, slow loop from the PTX table):
    catches a wrong row/column interleave, pair order or word slot in ``repack`` that its own inverse would mirror."""
    gen = torch.Generator().manual_seed(bits * 1000 + group)
    u, scale, _, group = random_codes(48, 512, bits, group, False, gen)
    w = repack(u, scale, None, bits, group, torch.float16)
    rows, cols = torch.randint(0, 48, (300,), generator=gen), torch.randint(0, 512, (300,), generator=gen)
    for row, col in zip(rows.tolist(), cols.tolist()):
        assert fragment_value(w, row, col) == int(u[row, col]), (row, col)


@pytest.mark.parametrize("bits,group", CASES)
@pytest.mark.parametrize("asym", [False, True])
def test_reference_equals_the_dequantized_product(bits, group, asym):
    """``decode_gemm_ref`` on the repacked weight equals x ((u - z) s)^T in float64 with K padded (K = 352 is not a
    multiple of 128): catches a wrong inverse, scale/zero group layout, or padding that leaks into the product."""
    gen = torch.Generator().manual_seed(7 + bits + group)
    k = 352 if group in (32, -1) else 384 if group != 256 else 512
    u, scale, zero, group = random_codes(32, k, bits, group, asym, gen)
    w = repack(u, scale, zero, bits, group, torch.float64)
    assert torch.equal(decode_codes_ref(w), u)
    z = torch.full_like(scale, 2.0 ** (bits - 1)) if zero is None else zero.double()
    dense = (u.double() - z.repeat_interleave(group, 1)) * scale.double().repeat_interleave(group, 1)
    x = torch.randn(5, k, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(decode_gemm_ref(x, w), x @ dense.T, rtol=1e-12, atol=1e-12)


def test_from_compressed_tensors_reads_the_export():
    """The load-time repack from exported tensors (codes packed along K, 3-bit dense, zero points packed along N)
    keeps every code and zero point."""
    gen = torch.Generator().manual_seed(3)
    u, scale, zero, group = random_codes(32, 256, 3, 64, True, gen)
    w = from_compressed_tensors(pack_rows(u, 3), scale, 3, 256, pack_rows(zero.T.contiguous(), 3).T.contiguous(),
                                torch.float32)
    assert torch.equal(decode_codes_ref(w), u)
    assert torch.equal(w.zeros.transpose(1, 2).reshape(32, -1), zero.float())


@pytest.mark.parametrize("n,k,bits,group,why", [(40, 256, 4, 128, "multiple of 16"), (32, 200, 4, 8, "multiple of 32"),
                                               (32, 256, 5, 128, "5-bit"), (32, 384, 4, 96, "group size 96")])
def test_shapes_the_kernel_cannot_take_are_named(n, k, bits, group, why):
    assert why in check_decode_shape(n, k, bits, group)
    with pytest.raises(ValueError, match=why):
        repack(torch.zeros(n, k, dtype=torch.int64), torch.ones(n, max(1, k // group)), None, bits, group,
               torch.float16)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits,group", CASES)
@pytest.mark.parametrize("asym", [False, True])
def test_kernel_matches_reference(dtype, bits, group, asym):
    """The CUDA kernel against float64 on fresh inputs, M = 1..16, K with and without padding to 128 (relative error
    below 1e-2, no NaN): catches wrong fragment reads, dequantization, group scales, the warps' K split and sum, or
    token masking."""
    from tbq_kernels.decode_gemm import decode_gemm

    gen = torch.Generator().manual_seed(11 + bits)
    padded = {32: 1344, 64: 1344, -1: 1344, 128: 1408}.get(group, 1536)  # 1344: K padded to 1408 in the layout
    for n, k in ((64, 4096), (80, padded)):
        u, scale, zero, g = random_codes(n, k, bits, group, asym, gen)
        w = repack(u, scale, zero, bits, g, dtype).to("cuda")
        for m in (1, 3, 8, 9, 16):
            x = torch.randn(m, k, generator=gen).to(dtype).cuda()
            ref = decode_gemm_ref(x.double(), w.to("cpu")).cuda()
            y = decode_gemm(x, w).double()
            assert not y.isnan().any()
            err = float((y - ref).norm() / ref.norm())
            assert err < 1e-2, (n, k, m, err)


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits,group", CASES)
@pytest.mark.parametrize("asym", [False, True])
def test_kernel_exact_on_integer_inputs(dtype, bits, group, asym):
    """Power-of-two scales, x in {-2..2} and zero points anywhere in [0, 2^b): every product and partial sum is an exact
    float32, so the output equals the float64 reference rounded once to x's dtype, bit for bit, also for x at an
    address that is not 16-byte aligned (the wrapper copies it): catches dequantization off by one anywhere (as
    BIAS + z rounded in bf16 for 8-bit zero points above 128, 0.5% off in all: under the 1e-2 tolerance above)."""
    from tbq_kernels.decode_gemm import decode_gemm

    gen = torch.Generator().manual_seed(31 + bits)
    k = {32: 1344, 64: 1344, -1: 1344, 128: 1408}.get(group, 1536)
    u, _, zero, g = random_codes(80, k, bits, group, asym, gen)
    scale = 2.0 ** -torch.randint(4, 9, (80, k // g), generator=gen).double()
    w = repack(u, scale, zero, bits, g, dtype).to("cuda")
    for m in (1, 9, 16):
        x = torch.randint(-2, 3, (m, k), generator=gen).to(dtype)
        expected = decode_gemm_ref(x.double(), w.to("cpu")).to(dtype).cuda()
        assert torch.equal(decode_gemm(x.cuda(), w), expected), (m, dtype, bits, group, asym)
        unaligned = torch.empty(m * k + 1, dtype=dtype, device="cuda")[1:].view(m, k)
        unaligned.copy_(x)
        assert torch.equal(decode_gemm(unaligned, w), expected)


@cuda
def test_kernel_in_a_cuda_graph_and_the_op():
    """Replayed from a CUDA graph (as vLLM runs decode) and through ``tbq::decode_gemm`` the kernel gives the eager
    result: catches launches that are not on the current stream or state kept between launches."""
    from tbq_kernels.decode_gemm import decode_gemm, decode_gemm_op

    gen = torch.Generator().manual_seed(5)
    u, scale, _, g = random_codes(256, 2048, 4, 128, False, gen)
    w = repack(u, scale, None, 4, g, torch.float16).to("cuda")
    x = torch.randn(4, 2048, generator=gen).half().cuda()
    eager = decode_gemm(x, w)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_gemm(x, w)
    for _ in range(3):
        graph.replay()
        torch.testing.assert_close(out, eager, rtol=0, atol=0)
    torch.testing.assert_close(decode_gemm_op(x, w.codes, w.hi, w.scales, w.zeros, 4, g, 2048), eager, rtol=0, atol=0)


@cuda
@pytest.mark.parametrize("act_bits", [4, 8])
@pytest.mark.parametrize("group", [-1, 128])
def test_kernel_with_integer_activations(act_bits, group):
    """``act_bits``: the kernel quantizes x per token itself and equals s_x (q_x W^T) of ``quantize_act_ref`` in
    float64 (W4A4 / W4A8): catches a wrong per-token scale, rounding, clamp, or a scale applied to the wrong token."""
    from tbq_kernels.decode_gemm import decode_gemm
    from tbq_kernels.reference import quantize_act_ref

    gen = torch.Generator().manual_seed(act_bits + group)
    u, scale, _, g = random_codes(128, 2048, 4, group, False, gen)
    w = repack(u, scale, None, 4, g, torch.float16).to("cuda")
    dense = (u.double() - 8) * scale.double().repeat_interleave(g, 1)
    for m in (1, 5, 16):
        x = torch.randn(m, 2048, generator=gen).half()
        x[m - 1] = 0 if m > 1 else x[m - 1]  # an all-zero token has scale 1 and gives zeros
        q, s_x = quantize_act_ref(x, act_bits, 0.9)
        ref = (q @ dense.T) * s_x
        y = decode_gemm(x.cuda(), w, act_bits=act_bits, act_clip=0.9).double().cpu()
        assert float((y - ref).norm() / ref.norm()) < 2e-3
        if m > 1:
            assert torch.equal(y[m - 1], torch.zeros_like(y[m - 1]))


@cuda
@pytest.mark.parametrize("bits,group", [(4, 128), (3, -1), (2, 32), (8, 64)])
def test_kernel_persistent_blocks_walk_every_tile_group(bits, group):
    """With 1, 2 or 3 persistent blocks (each walks several two-tile groups) the kernel equals the float64 reference
    and, bit for bit, the default launch (the K split and the warps' sum order do not depend on it); N = 80 (five
    16-row tiles: a ragged last group) and K_pad / 128 = 11 steps (warps past the last step): catches a block that
    skips or repeats groups, a group mapped to the wrong rows, or a pipeline that carries a step into the next group."""
    from tbq_kernels.decode_gemm import decode_gemm

    gen = torch.Generator().manual_seed(23 + bits)
    u, scale, _, g = random_codes(80, 1408, bits, group, False, gen)
    w = repack(u, scale, None, bits, g, torch.float16).to("cuda")
    for m in (1, 16):
        x = torch.randn(m, 1408, generator=gen).half().cuda()
        ref = decode_gemm_ref(x.double(), w.to("cpu")).cuda()
        default = decode_gemm(x, w)
        for max_blocks in (1, 2, 3):
            y = decode_gemm(x, w, max_blocks=max_blocks)
            assert float((y.double() - ref).norm() / ref.norm()) < 1e-2, (m, max_blocks)
            torch.testing.assert_close(y, default, rtol=0, atol=0)
