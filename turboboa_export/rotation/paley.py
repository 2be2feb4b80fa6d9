"""Paley's construction I of Hadamard matrices of order q + 1 (q a prime power, q = 3 mod 4), which generated
the base matrices shipped in ``turboboa_export/data/hadamard``:

    python -m turboboa_export.rotation.paley 11 19 27 43 343  # writes had12.txt, had20.txt, ..., had344.txt

(344 = 7^3 + 1 gives Llama-2's 11008 = 344 * 2^5.)

H = I + S with S = [[0, 1^T], [-1, Q]], Q_ij = chi(a_i - a_j) over GF(q) (chi: quadratic character).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[1] / "data" / "hadamard"


def _prime_power(q: int) -> tuple[int, int]:
    for p in range(2, q + 1):
        if q % p == 0:
            k, n = 0, q
            while n % p == 0:
                n, k = n // p, k + 1
            if n != 1:
                raise ValueError(f"{q} is not a prime power")
            return p, k
    raise ValueError(f"{q} is not a prime power")


def _polymulmod(a: tuple, b: tuple, mod: tuple, p: int) -> tuple:
    """a * b mod the monic polynomial ``mod`` over GF(p); coefficients low degree first."""
    k = len(mod) - 1
    prod = [0] * (2 * k - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            prod[i + j] = (prod[i + j] + x * y) % p
    for d in range(len(prod) - 1, k - 1, -1):  # x^d = -(mod[0..k-1]) x^(d-k)
        c = prod[d]
        if c:
            for i in range(k):
                prod[d - k + i] = (prod[d - k + i] - c * mod[i]) % p
            prod[d] = 0
    return tuple(prod[:k])


def _irreducible(p: int, k: int) -> tuple:
    """A monic polynomial of degree k (k <= 3) without roots in GF(p), hence irreducible."""
    for low in itertools.product(range(p), repeat=k):
        poly = low + (1,)
        if all(sum(c * x**i for i, c in enumerate(poly)) % p for x in range(p)):
            return poly
    raise ValueError(f"no irreducible polynomial of degree {k} over GF({p})")


def paley_hadamard(q: int) -> torch.Tensor:
    """The ±1 Hadamard matrix of order q + 1 (int8)."""
    p, k = _prime_power(q)
    if q % 4 != 3 or k > 3:
        raise ValueError(f"Paley I needs a prime power q = 3 mod 4 of degree <= 3, got {q}")
    elements = list(itertools.product(range(p), repeat=k))
    mod = _irreducible(p, k) if k > 1 else (0, 1)
    squares = {_polymulmod(a, a, mod, p) if k > 1 else ((a[0] * a[0]) % p,) for a in elements if any(a)}
    zero = (0,) * k

    def chi(a: tuple) -> int:
        return 0 if a == zero else (1 if a in squares else -1)

    n = q + 1
    s = torch.zeros(n, n, dtype=torch.int8)
    s[0, 1:], s[1:, 0] = 1, -1
    for i, a in enumerate(elements):
        for j, b in enumerate(elements):
            s[i + 1, j + 1] = chi(tuple((x - y) % p for x, y in zip(a, b)))
    return s + torch.eye(n, dtype=torch.int8)


def write(q: int) -> Path:
    h = paley_hadamard(q)
    path = DATA / f"had{q + 1}.txt"
    path.write_text("\n".join("".join("+" if v > 0 else "-" for v in row.tolist()) for row in h) + "\n")
    return path


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(write(int(arg)))
