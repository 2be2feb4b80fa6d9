"""vLLM plugin (entry point ``vllm.general_plugins``, ``tbq`` in pyproject.toml): serves the online Hadamard of
tbq's rotated exports at full speed, and block-diagonal ones under tensor parallelism.

``register()`` (idempotent; vLLM calls it in every process):

- registers the quantization method ``tbq``: compressed-tensors as vLLM reads it, for checkpoints whose transforms
  only this plugin serves (``quant_method: tbq``, so stock vLLM refuses them by name instead of misapplying them);
- replaces vLLM's compressed-tensors ``HadamardTransform`` with :class:`TbqHadamardTransform`'s class. For the
  transforms tbq derives (type ``hadamard``: Sylvester, optionally block-diagonal with ``head_dim`` B; type
  ``tbq-hadamard``: H_n = (H_m kron S_p) / sqrt(n) with tbq's shipped base H_m) it allocates no matrix, runs the
  Sylvester part with vLLM's Hadacore kernel on CUDA for sizes >= HADACORE_MIN and as one [p, p] GEMM below (torch
  butterflies off CUDA), and H_m as one [m, m] x [m, p] product per token; block-diagonal transforms run at tensor-parallel size > 1 when B divides each rank's share of
  the input; a full transform of a sharded input is refused in one line naming ``--online-rotation block:B``.
  Every other transform (dense ``random-hadamard`` matrices, output transforms) is left to vLLM's own code;
- serves W4A4 and W4A8 layers (``quant_method: tbq`` too: stock vLLM has no int4-activation scheme): int4 weights as
  exported, per-token int4/int8 activations with the run's clip ratio, the product on the int8 tensor cores
  (``turboboa_export.vllm_int_scheme``, ``tbq_kernels.int_act``).
"""

from __future__ import annotations

from .rotation.hadamard import factor

TBQ_HADAMARD = "tbq-hadamard"  # transform type of the full m * 2^k Hadamard, m > 1
PLUGIN_QUANT_METHOD = "tbq"  # quant_method of checkpoints that only vLLM with this plugin serves
ENTRY_POINT = "turboboa_export.vllm_plugin:register"
DERIVED = ("hadamard", TBQ_HADAMARD)
ACT_CLIP_KEY = "act_clip"  # quantization_config["tbq"][ACT_CLIP_KEY]: the clip ratio of W4A4/W4A8 activations
# vLLM 0.25.1's Hadacore miscomputes some token counts below this size (measured on an H200, fp16 and bf16: e.g.
# 38 rows of 128, 12728 rows of 32); the plugin runs smaller Sylvester blocks as one [p, p] GEMM instead, and only
# exports whose blocks are at least this large are left to stock vLLM
HADACORE_MIN = 512


def derived_plan(kind: str, head_dim: int | None, n_local: int, n: int, tp: int) -> int | None:
    """The block size B to apply over the rank's ``n_local`` inputs (None: the full H_n), or a ValueError in one
    line when the transform cannot be applied per rank. ``n`` is the layer's whole input width."""
    if head_dim is not None:
        if n_local % head_dim:
            raise ValueError(f"online Hadamard blocks of {head_dim} do not divide each rank's {n_local} inputs at "
                             f"tensor-parallel size {tp}; serve with a size that leaves multiples of {head_dim}")
        return head_dim
    if n_local != n:
        raise ValueError(f"the full online Hadamard of order {n} mixes all {n} inputs, which tensor-parallel size "
                         f"{tp} splits across ranks; re-quantize with `tbq quantize --rotate hadamard "
                         f"--online-rotation block:B` (B a power of two dividing {n_local}) to serve at TP > 1")
    if kind == "hadamard":
        return n  # a power of two: one Sylvester block
    factor(n)
    return None


def register() -> None:
    """Register the ``tbq`` quantization method and the derived Hadamard transforms (idempotent)."""
    from .vllm_classes import TbqConfig, TbqHadamardTransform  # vLLM pickles the config: module-level classes

    from vllm.model_executor.layers.quantization import register_quantization_config
    from vllm.model_executor.layers.quantization.compressed_tensors.transform import linear

    if linear.HadamardTransform is not TbqHadamardTransform:
        linear.HadamardTransform = TbqHadamardTransform
        register_quantization_config(PLUGIN_QUANT_METHOD)(TbqConfig)
