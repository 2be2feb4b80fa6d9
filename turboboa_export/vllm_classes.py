"""The vLLM classes behind :mod:`turboboa_export.vllm_plugin` (imported only by its ``register``, in a Python with
vLLM): the ``tbq`` quantization config (integer-activation layers on :class:`TbqIntActScheme`) and the transform
module that applies derived Hadamards."""

from __future__ import annotations

import torch
# compressed_tensors first: its transform module imports it back (an import cycle inside vLLM)
from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import CompressedTensorsConfig
import vllm._custom_ops as ops
from compressed_tensors.transform import TransformLocation
from vllm.distributed.parallel_state import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.quantization.compressed_tensors.transform.module import HadamardTransform

from tbq_kernels.hadamard_mix import hadamard_mix_op
from tbq_kernels.hadamard_quant import fusable

from .rotation.hadamard import apply_online_rotation, base_matrix, factor, sylvester, sylvester_transform
from .vllm_int_scheme import TbqIntActScheme
from .vllm_plugin import ACT_CLIP_KEY, DERIVED, HADACORE_MIN, PLUGIN_QUANT_METHOD, derived_plan


class TbqConfig(CompressedTensorsConfig):
    """compressed-tensors checkpoints that need tbq's plugin (``quant_method: tbq``): derived online Hadamards, and
    W4A4/W4A8 layers (dynamic per-token integer activations, clip ratio ``quantization_config.tbq.act_clip``)."""

    act_clip: float | None = None

    def get_name(self) -> str:
        return PLUGIN_QUANT_METHOD

    @classmethod
    def from_config(cls, config: dict) -> "TbqConfig":
        out = super().from_config(config)
        out.act_clip = (config.get(PLUGIN_QUANT_METHOD) or {}).get(ACT_CLIP_KEY)
        return out

    def get_scheme(self, layer: torch.nn.Module, layer_name: str | None = None):
        parts = self.get_scheme_dict(layer, layer_name)
        acts = parts.get("input_activations") if parts else None
        if acts is None or parts.get("weights") is None:
            return super().get_scheme(layer, layer_name)
        if self.act_clip is None:
            raise ValueError(f"quantization_config has integer activations but no {PLUGIN_QUANT_METHOD}."
                             f"{ACT_CLIP_KEY}; re-export the run with this tbq (`tbq export RUN --format vllm`)")
        return TbqIntActScheme(parts["weights"], acts, self.act_clip, layer_name)


def hadacore_or_butterflies(y: torch.Tensor) -> torch.Tensor:
    """y @ S_p / sqrt(p) over the last dim: vLLM's Hadacore (in place) for fp16/bf16 on CUDA when p >= HADACORE_MIN
    (below, it miscomputes some token counts), else torch butterflies."""
    if y.is_cuda and y.dtype in (torch.float16, torch.bfloat16) and y.shape[-1] >= HADACORE_MIN:
        return ops.hadacore_transform(y.contiguous())
    return sylvester_transform(y)


def sylvester_gemm_matrix(p: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """S_p / sqrt(p) [p, p] for the sizes Hadacore must not run (p < HADACORE_MIN), else None."""
    return (sylvester(p) / p**0.5).to(device, dtype) if p < HADACORE_MIN else None


def sylvester_op(syl: torch.Tensor | None):
    """The normalized Sylvester transform over the last dim: one GEMM with ``syl`` (symmetric) when given, else
    :func:`hadacore_or_butterflies`."""
    return hadacore_or_butterflies if syl is None else (lambda y: torch.matmul(y, syl))


def full_transform(x: torch.Tensor, base_t: torch.Tensor, sylvester_op) -> torch.Tensor:
    """x @ (H_m kron S_p) / sqrt(m p) over the last dim, ``base_t`` = H_m^T / sqrt(m) [m, m] in x's dtype: the H_m
    part first, in one pass into a fresh buffer (``tbq::hadamard_mix``), then the Sylvester part on that buffer
    (Hadacore works in place). The two parts commute: H_m^T X S_p."""
    m = base_t.shape[0]
    y = hadamard_mix_op(x.reshape(-1, m, x.shape[-1] // m), base_t)
    return sylvester_op(y).reshape(x.shape)


class TbqHadamardTransform(HadamardTransform):
    """vLLM's transform module; derived input Hadamards hold no weights (see the module docstring)."""

    def __init__(self, transforms, layer, weight_loader, input_size_per_partition, output_partition_sizes):
        t = transforms.get(0)
        if t is None or t.scheme.type not in DERIVED or t.args.location != TransformLocation.INPUT:
            super().__init__(transforms, layer, weight_loader, input_size_per_partition, output_partition_sizes)
            self.block = self.base = self.syl = None
            self.derived = False
            return
        torch.nn.Module.__init__(self)
        self.transforms, self.scales, self.derived = transforms, {}, True
        n = getattr(layer, "input_size", input_size_per_partition)
        self.block = derived_plan(t.scheme.type, t.scheme.head_dim, input_size_per_partition, n,
                                  get_tensor_model_parallel_world_size())
        # in the dtype and on the device vLLM builds the layers with (its device context)
        where, dtype = torch.empty(0).device, torch.get_default_dtype()
        m = 1 if self.block is not None else factor(n)[0]
        p = self.block or n // m
        base = base_matrix(m).T.to(where, dtype).contiguous() if m > 1 else None  # H_m^T / sqrt(m)
        syl = sylvester_gemm_matrix(p, where, dtype)
        self.register_buffer("base", base, persistent=False)
        self.register_buffer("syl", syl, persistent=False)
        # a W4A4/W4A8 layer takes the transform into its activation quantization (one pass: tbq::hadamard_quant)
        scheme = getattr(layer, "scheme", None)
        base32 = base_matrix(m).T.to(where, torch.float32).contiguous() if m > 1 else None
        self.fused = isinstance(scheme, TbqIntActScheme) and fusable(n, base32, p, where)
        if self.fused:
            scheme.fuse_input_hadamard(layer, base32, p)

    def process_weights_after_loading(self):
        if not self.derived:
            super().process_weights_after_loading()

    def forward(self, value: torch.Tensor, part_id: int = 0) -> torch.Tensor:
        if not self.derived:
            return super().forward(value, part_id)
        return value if self.fused else self.rotate(value)

    def rotate(self, value: torch.Tensor) -> torch.Tensor:
        """value @ H over the last dim (the derived transform), in value's dtype."""
        op = sylvester_op(self.syl)
        if self.block is not None:
            return apply_online_rotation(value, self.block, op)
        return full_transform(value, self.base, op)
