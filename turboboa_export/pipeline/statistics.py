"""Per-linear second-moment statistics from recorded layer inputs (algorithm.md section 1).

H_in = (2/T) sum x_q x_q^T and, for propagated-error correction, R = (2/T) sum (x_fp - x_q) x_q^T, both
accumulated in float32 over all T calibration tokens. On a GPU, when the activations are fp16/bf16, the products
take the activations themselves as half-precision GEMM inputs (exact) with float32 sums (``algorithms.precision``);
float32 models keep full float32 products. R is summed as sum x_fp x_q^T - sum x_q x_q^T, the two sums kept apart.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..algorithms.precision import accumulate, half_products


@contextmanager
def record_inputs(modules: dict[str, nn.Module]):
    """While active, ``store[name]`` holds the latest input of each module, flattened to [tokens, d_in]."""
    store: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_module, args):
            store[name] = args[0].detach().reshape(-1, args[0].shape[-1])

        return fn

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in modules.items()]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@dataclass
class SecondMoments:
    """Running sums for H_in (and R when ``with_r``) of one input: sum x_q x_q^T and sum x_fp x_q^T, each added to
    inside its GEMM; R's difference is taken once at the end. ``tokens``: the rows added (summed over the ranks with
    the sums, ``distributed.reduce_statistics``), which set H's scale and its damping."""

    dim: int
    device: torch.device
    with_r: bool
    dtype: torch.dtype = torch.float32
    tokens: int = 0
    h_sum: torch.Tensor = field(init=False)
    c_sum: torch.Tensor | None = field(init=False)

    def __post_init__(self):
        self.h_sum = torch.zeros(self.dim, self.dim, dtype=self.dtype, device=self.device)
        self.c_sum = torch.zeros_like(self.h_sum) if self.with_r else None

    def add(self, x_q: torch.Tensor, x_fp: torch.Tensor | None = None) -> None:
        """Add tokens [t, d] of the quantized stream (and the same tokens of the full-precision stream)."""
        half = half_products(x_q)  # exact half inputs: products of the activations as they are
        xq = x_q if half else x_q.to(self.dtype)
        self.h_sum = accumulate(self.h_sum, xq.T, xq, half)  # sum x_q x_q^T
        if self.with_r:
            self.c_sum = accumulate(self.c_sum, (x_fp if half else x_fp.to(self.dtype)).T, xq, half)  # sum x_fp x_q^T
        self.tokens += x_q.shape[0]

    def sums(self) -> list[torch.Tensor]:
        """The running sums (what ranks add up)."""
        return [self.h_sum] + ([self.c_sum] if self.with_r else [])

    def h(self) -> torch.Tensor:
        return 2 * self.h_sum / self.tokens

    def r(self) -> torch.Tensor | None:
        """(2/T) sum (x_fp - x_q) x_q^T = (2/T) (sum x_fp x_q^T - sum x_q x_q^T)."""
        return 2 * (self.c_sum - self.h_sum) / self.tokens if self.with_r else None


INPUT_OF = {"q": "attn", "k": "attn", "v": "attn", "o": "o", "gate": "mlp", "up": "mlp", "down": "down"}


@dataclass
class BlockStatistics:
    """Second moments of each distinct linear input of a block, and attention statistics when asked for;
    ``half``: summed from fp16/bf16 activations on a GPU."""

    moments: dict[str, SecondMoments]
    attention: object | None = None
    half: bool = False

    def h(self, role: str) -> torch.Tensor:
        return self.moments[INPUT_OF[role]].h()

    def r(self, role: str) -> torch.Tensor | None:
        return self.moments[INPUT_OF[role]].r()

    def tokens(self, role: str) -> int:
        """How many calibration tokens (of every rank, once reduced) built the H_in of ``role``."""
        return self.moments[INPUT_OF[role]].tokens
