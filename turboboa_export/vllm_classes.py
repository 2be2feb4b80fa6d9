"""The vLLM classes behind :mod:`turboboa_export.vllm_plugin` (imported only by its ``register``, in a Python with
vLLM): the ``tbq`` quantization config and the transform module that applies derived Hadamards."""

from __future__ import annotations

import torch
# compressed_tensors first: its transform module imports it back (an import cycle inside vLLM)
from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import CompressedTensorsConfig
import vllm._custom_ops as ops
from compressed_tensors.transform import TransformLocation
from vllm.distributed.parallel_state import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.quantization.compressed_tensors.transform.module import HadamardTransform

from .rotation.hadamard import apply_online_rotation, base_matrix, factor, kron_transform, sylvester_transform
from .vllm_plugin import DERIVED, PLUGIN_QUANT_METHOD, derived_plan


class TbqConfig(CompressedTensorsConfig):
    """compressed-tensors checkpoints that need tbq's plugin (``quant_method: tbq``)."""

    def get_name(self) -> str:
        return PLUGIN_QUANT_METHOD


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
        base = None  # H_m^T / sqrt(m) in the dtype and on the device vLLM builds the layers with
        if self.block is None:
            where = torch.empty(0).device  # the device context vLLM initializes the model under
            base = base_matrix(factor(n)[0]).T.to(where, torch.get_default_dtype()).contiguous()
        self.register_buffer("base", base, persistent=False)

    def process_weights_after_loading(self):
        if not self.derived:
            super().process_weights_after_loading()

    def forward(self, value: torch.Tensor, part_id: int = 0) -> torch.Tensor:
        if not self.derived:
            return super().forward(value, part_id)
        if self.block is not None:
            return apply_online_rotation(value, self.block, hadacore_or_butterflies)
        return kron_transform(value, self.base, hadacore_or_butterflies)
