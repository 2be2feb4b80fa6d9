"""Orthonormal Hadamard matrices of order m * 2^k, m a shipped base order (package data, Paley construction), and
their fast application to activations.

H_n = (H_m kron S_{2^k}) / sqrt(n), S the Sylvester matrix; applying it to x [..., n] costs k butterflies on
the last 2^k entries and one m x m product, instead of an n x n matmul. The online rotation of down_proj's input
is either that full H_n or block-diagonal, I_{n/B} kron S_B / sqrt(B) (``block``: B a power of two dividing n).
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


def sylvester_transform(y: torch.Tensor) -> torch.Tensor:
    """y @ S_p / sqrt(p) over the last dim (p = y.shape[-1] a power of two), by one butterfly per bit of the
    index; y's dtype kept (what vLLM's Hadacore kernel computes on CUDA)."""
    p = y.shape[-1]
    lead = y.shape[:-1]
    h = 1
    while h < p:
        y = y.reshape(*lead, p // (2 * h), 2, h)
        y = torch.stack((y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]), dim=-2)
        h *= 2
    return y.reshape(*lead, p) / math.sqrt(p)


def base_matrix(m: int) -> torch.Tensor:
    """The orthonormal base H_m / sqrt(m) (float64, [m, m]) of the order-m part of :func:`hadamard_matrix`."""
    return _base(m) / math.sqrt(m)


def kron_transform(x: torch.Tensor, base_t: torch.Tensor, sylvester_op=sylvester_transform) -> torch.Tensor:
    """x @ (H_m kron S_p) / sqrt(m p) over the last dim (n = m p), for ``base_t`` = H_m^T / sqrt(m) [m, m] in x's
    dtype: X = x as [m, p] maps to H_m^T X S_p, the S_p part by ``sylvester_op`` (normalized, over the last dim;
    vLLM's Hadacore on CUDA in the plugin), the H_m part as one [m, m] x [m, p] product per token."""
    m = base_t.shape[0]
    y = sylvester_op(x.reshape(*x.shape[:-1], m, x.shape[-1] // m))
    return (torch.matmul(base_t, y) if m > 1 else y).reshape(x.shape)


def apply_hadamard(x: torch.Tensor, sylvester_op=sylvester_transform) -> torch.Tensor:
    """x @ H_n over the last dim (n = x.shape[-1]), x's dtype kept (:func:`kron_transform` with tbq's base)."""
    m = factor(x.shape[-1])[0]
    return kron_transform(x, base_matrix(m).T.to(x), sylvester_op)


def parse_online_rotation(value: str) -> int | None:
    """``full`` -> None, ``block:B`` -> B (a power of two >= 2); ValueError naming the accepted forms."""
    if value == "full":
        return None
    if value.startswith("block:") and value[6:].isdigit():
        b = int(value[6:])
        if b >= 2 and b & (b - 1) == 0:
            return b
    raise ValueError(f"online rotation must be 'full' or 'block:B' with B a power of two >= 2, got {value!r}")


def check_online_rotation(n: int, block: int | None) -> None:
    """A clear error when down_proj's width ``n`` cannot take the online rotation (``block`` None: full)."""
    if block is None:
        factor(n)
    elif n % block:
        raise TbqError(f"--online-rotation block:{block} needs a block size dividing the intermediate size {n}; "
                       f"choose a power of two that divides {n}, e.g. block:{n & -n}")


def apply_online_rotation(x: torch.Tensor, block: int | None, sylvester_op=sylvester_transform) -> torch.Tensor:
    """x @ H over the last dim, H = H_n (``block`` None) or I_{n/B} kron S_B / sqrt(B) (``block`` = B)."""
    if block is None:
        return apply_hadamard(x, sylvester_op)
    return sylvester_op(x.reshape(*x.shape[:-1], -1, block)).reshape(x.shape)
