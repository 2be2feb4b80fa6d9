"""BoA's attention-aware statistics, computed from captured block inputs with the block's own modules.

- H_out,q per query head: mean_l R_l^T (G C_K G) R_l with C_K = (2/T) sum k k^T over post-RoPE keys of its kv
  head; H_out,k per kv head: the same with query covariances averaged over the heads sharing it.
  With ``centred_keys``, C_K = (2/T) sum_t sum_s a_ts (k_s - kbar_t)(k_s - kbar_t)^T, kbar_t = sum_s a_ts k_s: the
  softmax is blind to a score error shared by all keys of a query, so the first-order change of query t's attention
  distribution is the variance of its score error under a_t (tbq's deviation from BoA; results/gemma3-w3-cpu/s16).
  R_l is the rotate-half RoPE rotation at position l; G = diag(gain of q_norm/k_norm) where the model has them.
- v: per query head Z_h = A_h X (causal softmax attention probabilities), H_v = (2/T) sum Z^T Z and, for F2,
  R_v = (2/T) sum (Z_fp - Z_q)^T Z_q, both averaged over the heads sharing a kv head.
Two exact routes to the V sums, chosen per sequence by their FLOP count:
- "z": form Z_h = A_h X for every head, then Z^T Z (cheap when the sequence is long next to the width, as SmolLM2's);
- "gram": sum_h Z_h^T Z_h = X^T (sum_h A_h^T A_h) X and sum_h Z_fp,h^T Z_q,h = X_fp^T (sum_h A_fp,h^T A_q,h) X_q
  (cheap when the width is large, as Llama's: about 2.4x fewer FLOPs at Llama-3-8B shapes and 2048 tokens).
On a GPU, for fp16/bf16 models (whose own attention multiplies half-precision probabilities and values), the
products of probabilities (A X, A^T A) take half-precision inputs with float32 sums and the products of their
float32 results run in TF32 (rounding S = sum A^T A or S X to bf16 instead made R_v's cancellation lose ~5%,
``tests/test_gpu_precision.py``); the scores are exact products of the half q and k (float32 sums), the softmax
runs in float32 as one fused kernel that returns half probabilities, and the small q/k covariances stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..algorithms import compiled
from ..algorithms.precision import accumulate, half_products, stats_matmul, tf32_matmuls
from ..arch import ArchSpec, AttentionShape, attribute


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the last dim."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x cos + rotate_half(x) sin; x [heads, L, d], cos/sin [L, d]."""
    return x * cos + rotate_half(x) * sin


def rope_averaged(c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """mean_l R_l^T C R_l for R_l = diag(cos_l) + diag(sin_l) J (J x = rotate_half(x)); c [..., d, d]."""
    n = cos.shape[0]
    ecc, ecs, ess = cos.T @ cos / n, cos.T @ sin / n, sin.T @ sin / n
    d = c.shape[-1]
    j = rotate_half(torch.eye(d, dtype=c.dtype, device=c.device)).T  # J with J x = rotate_half(x)
    # D_a C D_b = C * (a b^T), averaged over positions
    return c * ecc + (c * ecs) @ j + j.T @ (c * ecs.T) + j.T @ (c * ess) @ j


def norm_gain(norm, dim: int, like: torch.Tensor) -> torch.Tensor:
    """Effective per-channel gain of an RMS norm: norm(ones) (covers x*w and x*(1+w) conventions)."""
    return norm(torch.ones(dim, dtype=like.dtype, device=like.device)).to(like.dtype)


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor, scaling: float, out_dtype: torch.dtype) -> torch.Tensor:
    """softmax(scores * scaling) over the allowed keys of each query, returned in ``out_dtype``."""
    return torch.softmax((scores * scaling).masked_fill(~allowed, float("-inf")), dim=-1).to(out_dtype)


def attention_probs(q: torch.Tensor, k: torch.Tensor, scaling: float, window: int | None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Causal softmax(q k^T * scaling) per query head; q [H, L, d], k [H, L, d] -> [H, L, L]. Scores and softmax in
    ``dtype``, the result too, except for half-precision q and k on a GPU: their products are exact in float32
    (half inputs, float32 sums) and the probabilities come back in their half dtype, as the model's own are."""
    half = half_products(q)
    if half is not None:
        scores = stats_matmul(q, k.transpose(-1, -2), half)
    else:
        scores = q.to(dtype) @ k.to(dtype).transpose(-1, -2)
    n = q.shape[1]
    i = torch.arange(n, device=q.device)
    allowed = i[:, None] >= i[None, :]
    if window is not None:
        allowed &= (i[:, None] - i[None, :]) < window
    return compiled.on_device(masked_softmax, scores)(scores, allowed, scaling, half or dtype)


def _project(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """x W^T + b without the module's hooks: x was recorded after them (online transforms, activation quant)."""
    return torch.nn.functional.linear(x, linear.weight, linear.bias)


@dataclass
class AttentionStatistics:
    """Accumulates the statistics of one attention layer over calibration sequences."""

    attn: torch.nn.Module
    spec: ArchSpec
    shape: AttentionShape
    with_r: bool
    dtype: torch.dtype = torch.float32
    route: Literal["z", "gram"] | None = None  # None: the cheaper for each sequence's length
    centred_keys: bool = False  # H_out,q from the attention-centred key covariance

    def __post_init__(self):
        s = self.shape
        dev = next(self.attn.parameters()).device
        d_in = self.attn.get_submodule(self.spec.q.split(".", 1)[1]).in_features
        z = lambda *shape: torch.zeros(*shape, dtype=self.dtype, device=dev)  # noqa: E731
        self._qq = z(s.heads, s.head_dim, s.head_dim)  # sum q q^T per query head
        # H_out,q's key side: sum_t Var_{a_t}(k) per query head (centred keys), else sum k k^T per kv head
        self._kc = z(s.heads, s.head_dim, s.head_dim) if self.centred_keys else None
        self._kk = None if self.centred_keys else z(s.kv_heads, s.head_dim, s.head_dim)
        self._zz = z(s.kv_heads, d_in, d_in)  # sum over each kv head's query heads of Z_q^T Z_q
        self._fq = z(s.kv_heads, d_in, d_in) if self.with_r else None  # the same of Z_fp^T Z_q
        self.tokens = 0
        self.cos = self.sin = None

    def _module(self, path: str | None):
        return None if path is None else self.attn.get_submodule(path.split(".", 1)[1])

    def queries_keys(self, x: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-norm, post-RoPE queries [heads, L, d] and keys [kv_heads, L, d] of attention input x [L, in]."""
        s = self.shape
        n = x.shape[0]
        q = _project(self._module(self.spec.q), x).view(n, s.heads, s.head_dim)
        k = _project(self._module(self.spec.k), x).view(n, s.kv_heads, s.head_dim)
        q_norm, k_norm = self._module(self.spec.q_norm), self._module(self.spec.k_norm)
        if q_norm is not None:
            q, k = q_norm(q), k_norm(k)
        cos, sin = (t.reshape(n, -1) for t in kwargs["position_embeddings"])
        self.cos, self.sin = cos.to(self.dtype), sin.to(self.dtype)
        return apply_rope(q.transpose(0, 1), cos, sin), apply_rope(k.transpose(0, 1), cos, sin)

    def probabilities(self, x: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(queries, keys, A) with A_h the causal softmax attention probabilities of head h: [heads, L, L]."""
        q, k = self.queries_keys(x, kwargs)
        k_rep = k.repeat_interleave(self.shape.group, dim=0)
        window = attribute(self.attn, self.spec.window)
        return q, k, attention_probs(q, k_rep, self.attn.scaling, window, self.dtype)

    def weighted_inputs(self, x: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                       torch.Tensor]:
        """(queries, keys, A, Z) with Z_h = A_h X: [heads, L, in]."""
        q, k, probs = self.probabilities(x, kwargs)
        half = half_products(x)
        return q, k, probs, stats_matmul(probs, x if half else x.to(self.dtype), half)

    def _route(self, n: int, width: int) -> str:
        """The cheaper way to the V sums for a sequence of n tokens: Z per head, or the grouped Gram of A."""
        if self.route is not None:
            return self.route
        s = self.shape
        z_flops = s.heads * (n * n * width + n * width * width)  # A X, Z^T Z
        gram_flops = s.heads * n ** 3 + s.kv_heads * (n * n * width + n * width * width)  # A^T A, S X, X^T (S X)
        return "gram" if gram_flops < z_flops else "z"

    def _grouped(self, t: torch.Tensor) -> torch.Tensor:
        """[heads, L, c] -> [kv_heads, group * L, c]: each kv head's query heads stacked along the rows."""
        return t.reshape(self.shape.kv_heads, self.shape.group * t.shape[1], -1)

    def _add_z(self, x_q: torch.Tensor, x_fp: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, ...]:
        q, k, a_q, zq = self.weighted_inputs(x_q, kwargs)
        zq_g = self._grouped(zq)
        zf = self._grouped(self.weighted_inputs(x_fp, kwargs)[3]) if self.with_r else None
        with tf32_matmuls(x_q.device, half_products(x_q) is not None):
            self._zz = accumulate(self._zz, zq_g.transpose(-1, -2), zq_g, None)  # sum over the group's heads of Z^T Z
            if zf is not None:
                self._fq = accumulate(self._fq, zf.transpose(-1, -2), zq_g, None)  # sum Z_fp^T Z_q
        return q, k, a_q

    def _add_gram(self, x_q: torch.Tensor, x_fp: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, ...]:
        q, k, probs = self.probabilities(x_q, kwargs)
        a_q = self._grouped(probs)
        half = half_products(x_q)
        xq = x_q.to(self.dtype)

        def sandwich(acc, x_left, a_left):  # acc + X_left^T (sum_h A_left,h^T A_q,h) X_q
            gram = stats_matmul(a_left.transpose(-1, -2), a_q, half)
            with tf32_matmuls(x_q.device, half is not None):
                return accumulate(acc, x_left.to(self.dtype).T, gram @ xq, None)

        self._zz = sandwich(self._zz, xq, a_q)
        if self.with_r:
            self._fq = sandwich(self._fq, x_fp, self._grouped(self.probabilities(x_fp, kwargs)[2]))
        return q, k, probs

    @torch.no_grad()
    def add(self, x_q: torch.Tensor, x_fp: torch.Tensor, kwargs: dict) -> None:
        """Add one sequence's attention input in the quantized and full-precision streams ([L, in] each)."""
        route = self._route(*x_q.shape)
        q, k, probs = (self._add_gram if route == "gram" else self._add_z)(x_q, x_fp, kwargs)
        q, k = q.to(self.dtype), k.to(self.dtype)
        self._qq += q.transpose(-1, -2) @ q  # sum q q^T per head
        if self._kc is not None:
            self._add_centred_keys(k.repeat_interleave(self.shape.group, dim=0), probs.to(self.dtype))
        else:
            self._kk += k.transpose(-1, -2) @ k
        self.tokens += x_q.shape[0]

    def _add_centred_keys(self, k: torch.Tensor, a: torch.Tensor) -> None:
        """sum_t sum_s a_ts (k_s - kbar_t)(k_s - kbar_t)^T = K^T diag(sum_t a_t) K - (A K)^T (A K), per query head;
        k [heads, L, d] (each query head's keys), a [heads, L, L]."""
        received = a.sum(1)  # [heads, L]: attention each key receives
        kbar = a @ k  # [heads, L, d]: each query's attended mean key
        self._kc += (k * received[..., None]).transpose(-1, -2) @ k - kbar.transpose(-1, -2) @ kbar

    def sums(self) -> list[torch.Tensor]:
        """The running sums (what ranks add up)."""
        return ([self._qq, self._kc if self._kc is not None else self._kk, self._zz]
                + ([self._fq] if self.with_r else []))

    def h_out_q(self) -> torch.Tensor:
        """[heads, d, d] (from the attention-centred key covariance with ``centred_keys``)."""
        if self._kc is not None:
            return self._rotated(2 * self._kc / self.tokens, self.spec.q_norm)
        c_k = (2 * self._kk / self.tokens).repeat_interleave(self.shape.group, dim=0)
        return self._rotated(c_k, self.spec.q_norm)

    def h_out_k(self) -> torch.Tensor:
        """[kv_heads, d, d]."""
        s = self.shape
        c_q = (2 * self._qq / self.tokens).reshape(s.kv_heads, s.group, s.head_dim, s.head_dim).mean(1)
        return self._rotated(c_q, self.spec.k_norm)

    def _rotated(self, c: torch.Tensor, norm_path: str | None) -> torch.Tensor:
        m = rope_averaged(c, self.cos, self.sin)
        norm = self._module(norm_path)
        if norm is not None:
            g = norm_gain(norm, self.shape.head_dim, m)
            m = m * g[:, None] * g[None, :]  # G M G
        return m

    def h_in_v(self) -> torch.Tensor:
        """[kv_heads, in, in]: (2/T) sum Z^T Z averaged over each kv head's query heads."""
        return 2 * self._zz / (self.tokens * self.shape.group)

    def r_v(self) -> torch.Tensor | None:
        """[kv_heads, in, in]: (2/T) sum (Z_fp - Z_q)^T Z_q, from the two sums kept apart."""
        return 2 * (self._fq - self._zz) / (self.tokens * self.shape.group) if self.with_r else None
