"""vLLM plugin (entry point ``vllm.general_plugins``, ``tbq`` in pyproject.toml): serves the online Hadamard of
tbq's rotated exports at full speed, and block-diagonal ones under tensor parallelism.

``register()`` (idempotent; vLLM calls it in every process):

- registers the quantization method ``tbq``: compressed-tensors as vLLM reads it, for checkpoints whose transforms
  only this plugin serves (``quant_method: tbq``, so stock vLLM refuses them by name instead of misapplying them);
- replaces vLLM's compressed-tensors ``HadamardTransform`` with :class:`TbqHadamardTransform`'s class. For the
  transforms tbq derives (type ``hadamard``: Sylvester, optionally block-diagonal with ``head_dim`` B; type
  ``tbq-hadamard``: H_n = (H_m kron S_p) / sqrt(n) with tbq's shipped base H_m) it allocates no matrix, runs the
  Sylvester part with vLLM's Hadacore kernel on CUDA (torch butterflies elsewhere) and H_m as one [m, m] x [m, p]
  product per token; block-diagonal transforms run at tensor-parallel size > 1 when B divides each rank's share of
  the input; a full transform of a sharded input is refused in one line naming ``--online-rotation block:B``.
  Every other transform (dense ``random-hadamard`` matrices, output transforms) is left to vLLM's own code.
"""

from __future__ import annotations

import torch

from .rotation.hadamard import apply_online_rotation, base_matrix, factor, kron_transform, sylvester_transform

TBQ_HADAMARD = "tbq-hadamard"  # transform type of the full m * 2^k Hadamard, m > 1
PLUGIN_QUANT_METHOD = "tbq"  # quant_method of checkpoints that only vLLM with this plugin serves
ENTRY_POINT = "turboboa_export.vllm_plugin:register"
DERIVED = ("hadamard", TBQ_HADAMARD)


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


def _transform_class():
    """Defined lazily: vLLM is an optional dependency."""
    import vllm._custom_ops as ops
    from compressed_tensors.transform import TransformLocation
    from vllm.distributed.parallel_state import get_tensor_model_parallel_world_size
    from vllm.model_executor.layers.quantization.compressed_tensors.transform.module import HadamardTransform

    def hadacore_or_butterflies(y: torch.Tensor) -> torch.Tensor:
        """y @ S_p / sqrt(p) over the last dim: vLLM's Hadacore (in place) for fp16/bf16 on CUDA, else torch."""
        if y.is_cuda and y.dtype in (torch.float16, torch.bfloat16):
            return ops.hadacore_transform(y.contiguous())
        return sylvester_transform(y)

    class TbqHadamardTransform(HadamardTransform):
        """vLLM's transform module; derived input Hadamards hold no weights (see the module docstring)."""

        def __init__(self, transforms, layer, weight_loader, input_size_per_partition, output_partition_sizes):
            t = transforms.get(0)
            if t is None or t.scheme.type not in DERIVED or t.args.location != TransformLocation.INPUT:
                super().__init__(transforms, layer, weight_loader, input_size_per_partition, output_partition_sizes)
                self.block = self.base = None
                self.derived = False
                return
            torch.nn.Module.__init__(self)
            self.transforms, self.scales, self.derived = transforms, {}, True
            n = getattr(layer, "input_size", input_size_per_partition)
            self.block = derived_plan(t.scheme.type, t.scheme.head_dim, input_size_per_partition, n,
                                      get_tensor_model_parallel_world_size())
            self.base = None
            if self.block is None:  # H_m^T / sqrt(m) in the model's dtype (vLLM builds layers under it)
                self.register_buffer("base", base_matrix(factor(n)[0]).T.to(torch.get_default_dtype()).contiguous(),
                                     persistent=False)

        def process_weights_after_loading(self):
            if not self.derived:
                super().process_weights_after_loading()

        def forward(self, value: torch.Tensor, part_id: int = 0) -> torch.Tensor:
            if not self.derived:
                return super().forward(value, part_id)
            if self.block is not None:
                return apply_online_rotation(value, self.block, hadacore_or_butterflies)
            return kron_transform(value, self.base, hadacore_or_butterflies)

    return TbqHadamardTransform


def _quant_config_class():
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import CompressedTensorsConfig

    class TbqConfig(CompressedTensorsConfig):
        """compressed-tensors checkpoints that need this plugin (``quant_method: tbq``)."""

        def get_name(self) -> str:
            return PLUGIN_QUANT_METHOD

    return TbqConfig


def register() -> None:
    """Register the ``tbq`` quantization method and the derived Hadamard transforms (idempotent)."""
    from vllm.model_executor.layers.quantization import register_quantization_config
    from vllm.model_executor.layers.quantization.compressed_tensors.transform import linear

    if getattr(linear.HadamardTransform, "tbq", False):
        return
    cls = _transform_class()
    cls.tbq = True
    linear.HadamardTransform = cls
    register_quantization_config(PLUGIN_QUANT_METHOD)(_quant_config_class())
