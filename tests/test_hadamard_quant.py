"""The fused online Hadamard + per-token activation codes (tbq_kernels.hadamard_quant) against the float64 reference
built from the explicit rotation matrix the weights were rotated with: the float32 torch path on CPU, the CUDA kernel
(csrc/hadamard_quant.cu) on a GPU."""

from __future__ import annotations

import os

import pytest
import torch

from tbq_kernels.hadamard_quant import fusable, hadamard_quant, hadamard_quant_op, kernel_plan, shared_bytes
from tbq_kernels.reference import hadamard_quant_ref
from turboboa_export.rotation.hadamard import base_matrix, factor, hadamard_matrix, sylvester

# (n, block): the full H_n (block None; m = 28, 12, 44 and 20 padded to 32, 16, 64, 32; m = 1; 28 x 1024, Llama-3-70B's
# down_proj) or block-diagonal Sylvester blocks (56 of 64); 12 x 16 and 344 x 32 are not in the kernel (the float32
# torch path on every device)
CASES = [(28 * 512, None), (12 * 64, None), (44 * 128, None), (20 * 256, None), (1024, None), (28 * 1024, None),
         (56 * 64, 64), (4 * 256, 256), (12 * 16, None), (344 * 32, None)]


def seed() -> int:
    s = int(os.environ.get("TBQ_KERNEL_SEED", torch.seed() % 2**31))
    print(f"TBQ_KERNEL_SEED={s}")
    return s


def rotation(n: int, block: int | None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(explicit float64 H [n, n], the base_t operand, p) of a case."""
    if block is not None:
        return torch.block_diag(*[sylvester(block) / block**0.5] * (n // block)), None, block
    m, p = factor(n)
    return hadamard_matrix(n), (base_matrix(m).T.contiguous() if m > 1 else None), p


def activations(t: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Rows over three decades with a few outlier channels and one all-zero row (float64)."""
    x = torch.randn(t, n, generator=gen, dtype=torch.float64) * torch.logspace(-2, 1, t, dtype=torch.float64)[:, None]
    x[:, torch.randint(0, n, (4,), generator=gen)] *= 30
    x[t // 2] = 0
    return x


def check_codes(q: torch.Tensor, s: torch.Tensor, x: torch.Tensor, h: torch.Tensor, bits: int, clip: float,
                rel: float) -> None:
    """Scales within ``rel`` of the reference, and every code a rounding of the reference's y / s_x moved by at most
    ``rel`` of the code range (so a code may differ by one step only next to a rounding boundary)."""
    q_ref, s_ref = hadamard_quant_ref(x, h, bits, clip)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (x.shape[0], 1)
    assert float(((s.double().cpu() - s_ref).abs() / s_ref).max()) <= rel
    y = torch.clamp((x.cpu().double() @ h.double()) / s_ref, -qmax - 1, qmax)
    off = float((q.double().cpu() - y).abs().max())
    assert off <= 0.5 + rel * (qmax + 1), off
    assert float((q.double().cpu() - q_ref).abs().max()) <= 1


@pytest.mark.parametrize("n,block", [c for c in CASES if c[0] <= 16384])  # 28672: a 6.6 GB float64 H on CPU
@pytest.mark.parametrize("bits,clip", [(4, 0.9), (8, 1.0)])
def test_torch_path_matches_reference(n, block, bits, clip):
    """float32 butterflies and base product on CPU (x float32 and float16) against x @ H in float64."""
    gen = torch.Generator().manual_seed(seed())
    h, base_t, p = rotation(n, block)
    for dtype in (torch.float32, torch.float16):
        x = activations(9, n, gen).to(dtype)
        q, s = hadamard_quant(x, None if base_t is None else base_t.float(), p, bits, clip)
        check_codes(q, s, x.double(), h, bits, clip, 1e-5)
    q2, s2 = hadamard_quant_op(x, None if base_t is None else base_t.float(), p, bits, clip)
    assert torch.equal(q, q2) and torch.equal(s, s2)


def test_custom_op_passes_torch_opcheck():
    """The op's schema, its fake (shapes and dtypes for torch.compile) and its eager results agree (opcheck)."""
    gen = torch.Generator().manual_seed(seed())
    h, base_t, p = rotation(12 * 64, None)
    x = activations(5, 12 * 64, gen).float()
    torch.library.opcheck(hadamard_quant_op, (x, base_t.float(), p, 4, 0.9))
    torch.library.opcheck(hadamard_quant_op, (x, None, 64, 8, 1.0))


def test_plan_and_errors():
    """Which shapes the kernel takes (padded rows; 0 without the mix), its shared-memory bound, and the one-line
    errors."""
    big = 160 * 1024
    assert kernel_plan(28 * 512, torch.zeros(28, 28), 512, big) == 32
    assert kernel_plan(44 * 128, torch.zeros(44, 44), 128, big) == 64
    assert kernel_plan(1024, None, 1024, big) == 0 and kernel_plan(56 * 64, None, 64, big) == 0
    assert kernel_plan(344 * 32, torch.zeros(344, 344), 32, big) is None  # p = 32 is not built
    assert kernel_plan(28 * 2048, torch.zeros(28, 28), 2048, big) is None  # p = 2048 is not built
    assert kernel_plan(80 * 512, torch.zeros(80, 80), 512, big) is None  # more than 64 rows to mix
    # the bound counts the padded rows, the sign matrix (28 x 1064 + 32 x 36 words) and the static reduction buffer
    # (8 warps x 4 bytes): the opt-in limit covers static and dynamic shared memory together
    need = 4 * (28 * 1064 + 32 * 36) + 8 * 4
    assert shared_bytes(28, 32, 1024) == need
    assert kernel_plan(28 * 1024, torch.zeros(28, 28), 1024, need) == 32
    assert kernel_plan(28 * 1024, torch.zeros(28, 28), 1024, need - 4) is None
    assert kernel_plan(28 * 1024, torch.zeros(28, 28), 1024, 99 * 1024) is None  # sm86/sm89's 99 KiB
    assert fusable(344 * 32, torch.zeros(344, 344), 32, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"base must be \[28, 28\]"):
        kernel_plan(28 * 512, torch.zeros(12, 12), 512, big)
    with pytest.raises(ValueError, match="multiple of p=64"):
        hadamard_quant(torch.zeros(2, 100), None, 64, 4, 1.0)
    with pytest.raises(ValueError, match=r"base must be float32 \[28, 28\]"):
        hadamard_quant(torch.zeros(2, 28 * 16), torch.zeros(28, 28, dtype=torch.float16), 16, 4, 1.0)
    with pytest.raises(ValueError, match=r"base must be float32 \[28, 28\]"):
        hadamard_quant(torch.zeros(2, 28 * 16), torch.zeros(12, 12), 16, 4, 1.0)
    with pytest.raises(ValueError, match="clip ratio"):
        hadamard_quant(torch.zeros(2, 128), None, 64, 4, 0.0)
    with pytest.raises(ValueError, match="one of"):
        hadamard_quant(torch.zeros(2, 128), None, 64, 3, 1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits,clip", [(4, 0.9), (8, 1.0)])
def test_kernel_matches_reference_on_cuda(dtype, bits, clip, monkeypatch):
    """Every case (the kernel's and the fallback's), token counts 0 to 3000, strided rows, an input 8 bytes off a
    16-byte boundary (copied); the mix's tf32 operands keep 10 mantissa bits, so scales may move by 2e-3 and a code by
    one step next to a rounding boundary."""
    import tbq_kernels.hadamard_quant as hq

    gen = torch.Generator().manual_seed(seed())
    ran = 0
    for n, block in CASES:
        h, base_t, p = rotation(n, block)
        on_kernel = kernel_plan(n, base_t, p, hq.device_shared(torch.device("cuda"))) is not None
        ran += on_kernel
        with monkeypatch.context() as patch:
            if on_kernel:  # a silent fall back to the torch path would fail here
                patch.setattr(hq, "transform_torch", lambda *a: (_ for _ in ()).throw(AssertionError("fell back")))
            for t in (0, 1, 17, 3000 if n <= 4096 else 300):
                wide = activations(max(t, 2), n + 8, gen)[:t].to("cuda", dtype)
                x = wide[:, 4:-4] if t == 17 else wide[:, 8:]
                q, s = hadamard_quant(x, None if base_t is None else base_t.to("cuda", torch.float32), p, bits, clip)
                assert q.shape == x.shape and q.is_cuda
                if t:
                    check_codes(q, s, x.double(), h, bits, clip, 2e-3)
    assert ran >= 7  # every case but the two the kernel is not built for ran on it (on an H100/H200)
