"""The fused online Hadamard + per-token activation codes (tbq_kernels.hadamard_quant) against the float64 reference
built from the explicit rotation matrix the weights were rotated with: the torch path in process, the Triton kernel
interpreted on CPU (in the vLLM Python, which has Triton; TRITON_INTERPRET=1) and compiled on CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tbq_kernels.hadamard_quant import hadamard_quant, hadamard_quant_op, kernel_plan, split_sylvester
from tbq_kernels.reference import hadamard_quant_ref
from turboboa_export.rotation.hadamard import base_matrix, factor, hadamard_matrix, sylvester

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = os.environ.get("TBQ_VLLM_PYTHON")

# (n, block): the full H_n (block None; m = 28, 12, 1 and a padded 20) or block-diagonal Sylvester blocks
CASES = [(28 * 512, None), (12 * 64, None), (1024, None), (20 * 256, None), (4 * 256, 256), (12 * 16, None)]


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


@pytest.mark.parametrize("n,block", CASES)
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


def test_plan_and_errors():
    assert split_sylvester(512) == (16, 32) and split_sylvester(64) == (1, 64) and split_sylvester(2048) == (32, 64)
    assert split_sylvester(8) is None and split_sylvester(96) is None
    base = torch.zeros(28, 28)
    assert kernel_plan(28 * 512, base, 512) == (28, 32, 16, 32)
    assert kernel_plan(4096, None, 4096) == (1, 1, 64, 64)
    assert kernel_plan(3 * 64, None, 64) is None  # 4 padded rows of one 64-wide product: under 16 rows
    assert kernel_plan(28 * 2048, torch.zeros(28, 28), 2048) is None  # wider than one program holds
    with pytest.raises(ValueError, match=r"base must be \[28, 28\]"):
        kernel_plan(28 * 512, torch.zeros(12, 12), 512)
    with pytest.raises(ValueError, match="multiple of p=64"):
        hadamard_quant(torch.zeros(2, 100), None, 64, 4, 1.0)
    with pytest.raises(ValueError, match="base must be float32"):
        hadamard_quant(torch.zeros(2, 28 * 16), torch.zeros(28, 28, dtype=torch.float16), 16, 4, 1.0)
    with pytest.raises(ValueError, match="one of"):
        hadamard_quant(torch.zeros(2, 128), None, 64, 3, 1.0)


INTERPRETED = """
import json, os, sys
os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, sys.argv[1])
import math, torch
from tbq_kernels.hadamard_quant import kernel_plan
from tbq_kernels.triton_hadamard_quant import hadamard_quant_kernel
x, base_t, p, bits, clip = torch.load(sys.argv[2], weights_only=True).values()
m, rows, p1, p2 = kernel_plan(x.shape[1], base_t, p)
q = torch.empty(x.shape, dtype=torch.int8)
s = torch.empty(x.shape[0], 1)
hadamard_quant_kernel[(x.shape[0],)](x, base_t if base_t is not None else x, q, s, m, x.stride(0), 1 / math.sqrt(p),
    clip, float(2 ** (bits - 1) - 1), MP=rows, P1=p1, LOG_P1=p1.bit_length() - 1, P2=p2, LOG_P2=p2.bit_length() - 1,
    MIX=base_t is not None)
torch.save({"q": q, "s": s}, sys.argv[3])
"""


@pytest.mark.skipif(not VLLM_PYTHON, reason="set TBQ_VLLM_PYTHON to a Python with Triton (vLLM's; CI does)")
@pytest.mark.parametrize("n,block", [c for c in CASES if kernel_plan(c[0], rotation(*c)[1], rotation(*c)[2])])
def test_triton_kernel_interpreted_matches_reference(tmp_path, n, block):
    """The kernel's index arithmetic, Sylvester tiles, row padding, permutes and rounding, run by Triton's
    interpreter (float32 numpy products, so exact up to float32)."""
    gen = torch.Generator().manual_seed(seed())
    h, base_t, p = rotation(n, block)
    x = activations(5, n, gen)
    if x.shape[1] > 4096:  # a wide padded row (m = 28 in 32) over the two Sylvester factors
        x = x[:3]
    torch.save({"x": x.float(), "base_t": None if base_t is None else base_t.float(), "p": p, "bits": 4,
                "clip": 0.9}, tmp_path / "in.pt")
    subprocess.run([VLLM_PYTHON, "-c", INTERPRETED, str(ROOT), str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                   check=True, timeout=600, env={**os.environ, "TRITON_INTERPRET": "1"})
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    check_codes(out["q"], out["s"], x.float().double(), h, 4, 0.9, 1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits,clip", [(4, 0.9), (8, 1.0)])
def test_kernel_matches_reference_on_cuda(dtype, bits, clip):
    """Every case, token counts 0 to 3000, strided input; tf32 products keep 10 mantissa bits of the intermediates,
    so codes may move by one step next to a rounding boundary (at most 1 in 1000)."""
    gen = torch.Generator().manual_seed(seed())
    for n, block in CASES:
        h, base_t, p = rotation(n, block)
        for t in (0, 1, 17, 3000 if n <= 4096 else 300):
            wide = activations(max(t, 2), n + 8, gen)[:t].to("cuda", dtype)
            x = wide[:, 8:]
            q, s = hadamard_quant(x, None if base_t is None else base_t.to("cuda", torch.float32), p, bits, clip)
            assert q.shape == x.shape and q.is_cuda
            if t:
                check_codes(q, s, x.double(), h, bits, clip, 2e-3)
