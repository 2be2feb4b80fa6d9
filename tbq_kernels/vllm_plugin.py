"""vLLM plugin: serves tbq's compressed-tensors exports (and any int4/int8 pack-quantized checkpoint) on our kernels.

Registered through the entry point group ``vllm.general_plugins`` (``tbq_kernels`` in pyproject.toml). Opt-in
because it measured slower than Machete and Marlin (README, Kernels): with ``TBQ_VLLM_KERNELS=1`` in the
environment, ``register`` puts ``TbqDequantLinearKernel`` first among vLLM's CUDA mixed-precision linear kernels, so compressed-tensors' WNA16
scheme picks it wherever it can implement the layer and falls back to Machete/Marlin elsewhere; otherwise installing
tbq leaves vLLM as it is. Once on, it can be skipped like any vLLM kernel:
``VLLM_DISABLED_KERNELS=TbqDequantLinearKernel``.
"""

from __future__ import annotations

import os

import torch


def _kernel_class():
    """Defined lazily: vLLM is an optional dependency."""
    from vllm.model_executor.kernels.linear.mixed_precision.MPLinearKernel import MPLinearKernel, MPLinearLayerConfig
    from vllm.platforms import current_platform
    from vllm.scalar_type import scalar_types

    from .layout import from_compressed_tensors
    from .ops import dequant_gemm_op

    supported = {scalar_types.uint4b8: (4, False), scalar_types.uint8b128: (8, False),
                 scalar_types.uint4: (4, True), scalar_types.uint8: (8, True)}

    class TbqDequantLinearKernel(MPLinearKernel):
        """tbq's Triton dequant-GEMM (tbq_kernels/triton_gemm.py) behind vLLM's mixed-precision linear interface."""

        @classmethod
        def get_min_capability(cls) -> int:
            return 80

        @classmethod
        def can_implement(cls, c: MPLinearLayerConfig) -> tuple[bool, str | None]:
            k, n = c.partition_weight_shape
            group = k if c.group_size == -1 else c.group_size
            if not current_platform.is_cuda():
                return False, "tbq kernels run on CUDA"
            if supported.get(c.weight_type, (None, None))[1] != c.zero_points:
                return False, f"weight type {c.weight_type} (zero points {c.zero_points}) not supported"
            if c.has_g_idx or c.act_type not in (torch.float16, torch.bfloat16):
                return False, "needs fp16/bf16 activations and no activation reordering"
            if k % group or group % 16:
                return False, f"group size {c.group_size} must divide K={k} and be a multiple of 16"
            return True, None

        def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
            w_q, w_s, w_zp, _ = self._get_weight_params(layer)
            bits = supported[self.config.weight_type][0]
            w = from_compressed_tensors(w_q.data, w_s.data, bits, None if w_zp is None else w_zp.data,
                                        dtype=self.config.act_type)
            self._transform_param(layer, self.w_q_name, lambda _: w.packed)
            self._transform_param(layer, self.w_s_name, lambda _: w.scale)
            if w.zero is not None:
                self._transform_param(layer, self.w_zp_name, lambda _: w.zero)
            self._shape = (bits, w.group_size)

        def apply_weights(self, layer: torch.nn.Module, x: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
            w_q, w_s, w_zp, _ = self._get_weight_params(layer)
            bits, group = self._shape
            y = dequant_gemm_op(x, w_q, w_s, w_zp, bits, group)  # w_zp is None for symmetric layers
            return y if bias is None else y + bias

    return TbqDequantLinearKernel


def register() -> None:
    """With TBQ_VLLM_KERNELS=1, put our kernel first for CUDA mixed-precision linears (idempotent: vLLM may call
    plugins more than once)."""
    if os.environ.get("TBQ_VLLM_KERNELS") != "1":
        return
    from vllm.model_executor.kernels.linear import _POSSIBLE_KERNELS
    from vllm.platforms import PlatformEnum

    kernels = _POSSIBLE_KERNELS.setdefault(PlatformEnum.CUDA, [])
    if not any(k.__name__ == "TbqDequantLinearKernel" for k in kernels):
        kernels.insert(0, _kernel_class())
