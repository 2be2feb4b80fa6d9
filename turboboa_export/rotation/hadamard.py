"""Orthonormal Hadamard matrices of order m * 2^k, m a shipped base order (package data, Paley construction), and
their fast application to activations.

H_n = (H_m kron S_{2^k}) / sqrt(n), S the Sylvester matrix; applying it to x [..., n] costs k butterflies on
the last 2^k entries and one m x m product, instead of an n x n matmul.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import TbqError

DATA = Path(__file__).resolve().parents[1] / "data" / "hadamard"


@lru_cache(maxsize=None)
def base_orders() -> tuple[int, ...]:
    """Orders of the shipped base matrices (besides 1), and their pairwise products."""
    single = sorted(int(p.stem[3:]) for p in DATA.glob("had*.txt"))
    return tuple(sorted({1, *single, *(a * b for a in single for b in single)}))


@lru_cache(maxsize=None)
def _base(m: int) -> torch.Tensor:
    """The ±1 base matrix of order m (float64); products of two shipped bases are their Kronecker product."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    path = DATA / f"had{m}.txt"
    if path.is_file():
        rows = path.read_text().split()
        return torch.tensor([[1.0 if c == "+" else -1.0 for c in row] for row in rows], dtype=torch.float64)
    for a in base_orders():
        if 1 < a < m and m % a == 0 and (DATA / f"had{a}.txt").is_file() and (DATA / f"had{m // a}.txt").is_file():
            return torch.kron(_base(a), _base(m // a))
    raise KeyError(m)


def factor(n: int) -> tuple[int, int]:
    """(m, 2^k) with n = m * 2^k and m a shipped base order; a clear error when there is none."""
    for m in base_orders():
        if n % m == 0 and (n // m) & (n // m - 1) == 0:
            return m, n // m
    raise TbqError(f"no Hadamard matrix of order {n} is shipped (orders are m * 2^k with m in "
                   f"{', '.join(map(str, base_orders()))}); this size cannot be rotated")


def sylvester(n: int) -> torch.Tensor:
    """The ±1 Sylvester matrix of order n = 2^k (float64)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def hadamard_matrix(n: int) -> torch.Tensor:
    """The orthonormal Hadamard matrix H_n = (H_m kron S_{2^k}) / sqrt(n), float64."""
    m, p = factor(n)
    return torch.kron(_base(m), sylvester(p)) / math.sqrt(n)


def random_hadamard(n: int, seed: int) -> torch.Tensor:
    """diag(s) H_n with seeded random signs s: orthonormal, float64."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n,), generator=g, dtype=torch.float64) * 2 - 1
    return signs[:, None] * hadamard_matrix(n)


def apply_hadamard(x: torch.Tensor) -> torch.Tensor:
    """x @ H_n over the last dim (n = x.shape[-1]), by butterflies and one small product; x's dtype kept."""
    n = x.shape[-1]
    m, p = factor(n)
    lead = (*x.shape[:-1], m)
    y = x.reshape(*lead, p)
    h = 1
    while h < p:  # y @ S_p: one butterfly per bit of the index
        y = y.reshape(*lead, p // (2 * h), 2, h)
        y = torch.stack((y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]), dim=-2)
        h *= 2
    y = y.reshape(*lead, p)
    if m > 1:  # (H_m kron S): Y -> H_m^T Y over the m axis
        y = torch.einsum("...ij,ia->...aj", y, _base(m).to(y))
    return (y / math.sqrt(n)).reshape(x.shape)
