"""The vLLM compressed-tensors scheme of tbq's W4A4 and W4A8 exports (imported by :mod:`turboboa_export.vllm_classes`
in a Python with vLLM): symmetric int4 weights, channel-wise or grouped; dynamic per-token symmetric int4 or int8
activations with the run's clip ratio (:mod:`tbq_kernels.int_act`). A derived online Hadamard on the layer's input
(down_proj of a rotated run) is handed over by the transform module (:meth:`TbqIntActScheme.fuse_input_hadamard`)
and applied together with the activation quantization (``tbq_kernels.hadamard_quant``: the input read once, int8
codes written once). Paths:

- CUDA, channel-wise: codes unpacked to int8 at load (1 byte per weight), CUTLASS int8 scaled-mm (exact sums) at
  every token count (tbq's decode kernel was slower here: docs/results.md, 2026-12-02);
- CUDA, grouped: the weights stay packed and vLLM's W4A16 kernel (Machete/Marlin, as vLLM picks) multiplies the
  fake-quantized activations s_x q_x (exact up to their fp16/bf16 rounding);
- elsewhere (vLLM's CPU build): ``tbq::int_gemm``, float64 integer sums.
"""

from __future__ import annotations

import math

import torch
from compressed_tensors.quantization import QuantizationArgs
from vllm.model_executor.layers.quantization.compressed_tensors.schemes import (CompressedTensorsScheme,
                                                                                CompressedTensorsWNA16)
from vllm.model_executor.parameter import (BasevLLMParameter, ChannelQuantScaleParameter, GroupQuantScaleParameter,
                                           PackedvLLMParameter)
from vllm.platforms import current_platform

from tbq_kernels.hadamard_quant import hadamard_quant_op
from tbq_kernels.int_act import ACT_BITS, int8_weight, int_gemm_op, int_linear_cutlass, quantize_act
from tbq_kernels.layout import DequantWeight


def int_act_refusal(weights: QuantizationArgs, acts: QuantizationArgs) -> str | None:
    """Why the scheme cannot serve these args (one line naming what to choose), or None."""
    if acts.type != "int" or acts.num_bits not in ACT_BITS or not acts.dynamic or acts.strategy != "token":
        return (f"activations {acts.num_bits}-bit {acts.type} {acts.strategy} are not served; tbq serves dynamic "
                "per-token int4 or int8 activations (--act-bits 4 or 8)")
    if not acts.symmetric:
        return "asymmetric activations are not served; tbq quantizes activations symmetrically"
    if weights.type != "int" or weights.num_bits != 4 or not weights.symmetric or weights.actorder is not None:
        return (f"{weights.num_bits}-bit {'symmetric' if weights.symmetric else 'asymmetric'} weights"
                f"{' with act-order' if weights.actorder is not None else ''} with integer activations are not "
                "served; quantize with --bits 4, symmetric weights and no act-order")
    return None


class TbqIntActScheme(CompressedTensorsScheme):
    """W4A4 / W4A8: int4 weights [N, K/8] int32 and scales [N, groups] as exported, activations quantized per token."""

    def __init__(self, weights: QuantizationArgs, acts: QuantizationArgs, clip: float, layer_name: str | None):
        reason = int_act_refusal(weights, acts)
        if reason is not None:
            raise ValueError(f"{layer_name}: {reason}")
        self.act_bits, self.clip, self.layer_name = acts.num_bits, clip, layer_name
        self.group_size = weights.group_size if weights.strategy == "group" else None
        self.path = "portable" if not current_platform.is_cuda() else "wna16" if self.group_size else "cutlass"
        self.wna16 = (CompressedTensorsWNA16(strategy="group", num_bits=4, group_size=self.group_size, symmetric=True,
                                             layer_name=layer_name) if self.path == "wna16" else None)
        self.hadamard_p: int | None = None  # Sylvester order of a fused input Hadamard (None: none)

    @classmethod
    def get_min_capability(cls) -> int:
        return 80  # int8 tensor cores with int32 accumulation (Ampere and up)

    def create_weights(self, layer: torch.nn.Module, output_partition_sizes: list[int], input_size: int,
                       input_size_per_partition: int, params_dtype: torch.dtype, weight_loader, **kwargs) -> None:
        if input_size_per_partition != input_size:
            raise ValueError(f"{self.layer_name}: per-token activation scales need the whole input row, which "
                             "tensor parallelism splits; serve W4A4/W4A8 exports at --tensor-parallel-size 1")
        if self.wna16 is not None:
            self.wna16.create_weights(layer=layer, output_size=kwargs.get("output_size", sum(output_partition_sizes)),
                                      input_size=input_size, output_partition_sizes=output_partition_sizes,
                                      input_size_per_partition=input_size_per_partition, params_dtype=params_dtype,
                                      weight_loader=weight_loader)
            return
        n, k = sum(output_partition_sizes), input_size
        group = self.group_size or k
        if k % group:
            raise ValueError(f"{self.layer_name}: group size {group} does not divide K={k}")
        layer.output_size_per_partition = n
        weight = PackedvLLMParameter(input_dim=1, output_dim=0, packed_dim=1, packed_factor=8,
                                     weight_loader=weight_loader,
                                     data=torch.empty(n, math.ceil(k / 8), dtype=torch.int32))
        scale_data = torch.empty(n, k // group, dtype=params_dtype)
        scale = (GroupQuantScaleParameter(output_dim=0, input_dim=1, weight_loader=weight_loader, data=scale_data)
                 if self.group_size else
                 ChannelQuantScaleParameter(output_dim=0, weight_loader=weight_loader, data=scale_data))
        shape = BasevLLMParameter(data=torch.empty(2, dtype=torch.int64), weight_loader=weight_loader)
        layer.register_parameter("weight_packed", weight)
        layer.register_parameter("weight_scale", scale)
        layer.register_parameter("weight_shape", shape)
        layer.tbq_group_size = group

    def fuse_input_hadamard(self, layer: torch.nn.Module, base_t: torch.Tensor | None, p: int) -> None:
        """Apply the layer's derived online Hadamard from here on inside the activation quantization (the transform
        module, ``vllm_classes.TbqHadamardTransform``, then passes its input through): ``base_t`` H_m^T / sqrt(m)
        float32 [m, m] on the layer's device (None: Sylvester blocks of ``p`` alone), ``p`` the Sylvester order."""
        layer.register_buffer("tbq_hadamard_base", base_t, persistent=False)
        self.hadamard_p = p

    def codes(self, layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token codes (int8 [M, K]) and scales (float32 [M, 1]) of the layer's input x [M, K], after the fused
        online Hadamard when there is one."""
        if self.hadamard_p is None:
            return quantize_act(x, self.act_bits, self.clip)
        return hadamard_quant_op(x, layer.tbq_hadamard_base, self.hadamard_p, self.act_bits, self.clip)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        if self.wna16 is not None:
            self.wna16.process_weights_after_loading(layer)
            return
        if self.path == "cutlass":
            k = layer.weight_packed.shape[1] * 8
            packed, scale = layer.weight_packed.data, layer.weight_scale.data
            w8, s_w = int8_weight(DequantWeight(packed, scale, None, 4, k, k))
            del layer.weight_packed, layer.weight_scale
            layer.register_parameter("weight_int8", torch.nn.Parameter(w8, requires_grad=False))
            layer.register_parameter("weight_scale_f32", torch.nn.Parameter(s_w, requires_grad=False))
            return
        for name in ("weight_packed", "weight_scale"):  # plain tensors from here on (what the op takes)
            setattr(layer, name, torch.nn.Parameter(getattr(layer, name).data.contiguous(), requires_grad=False))

    def apply_weights(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if self.path == "cutlass":
            y = int_linear_cutlass(*self.codes(layer, x2), layer.weight_int8, layer.weight_scale_f32, x.dtype, bias)
        elif self.wna16 is not None:  # the fake-quantized activations s_x q_x through vLLM's W4A16 kernel
            q, s_x = self.codes(layer, x2)
            y = self.wna16.apply_weights(layer, (q.float() * s_x).to(x.dtype), bias)
        else:
            y = int_gemm_op(*self.codes(layer, x2), layer.weight_packed, layer.weight_scale, layer.tbq_group_size,
                            x.dtype)
            y = y if bias is None else y + bias
        return y.reshape(*x.shape[:-1], y.shape[-1])
