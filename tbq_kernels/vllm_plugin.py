"""vLLM plugin: decode steps of weight-only int2/3/4/8 compressed-tensors layers on tbq's CUDA kernel (opt-in).

Registered through the entry point group ``vllm.general_plugins`` (``tbq_kernels`` in pyproject.toml). Off unless
``TBQ_VLLM_KERNELS=1``: on the H200 the decode kernel is ahead of Marlin per layer at M = 1 but not yet in vLLM
(results/decode-h200-v4: W4 g128 299.7 against 305.7 tok/s at batch 1, 3153 against 3541 at 16), so installing tbq
leaves vLLM's choice alone. Turned on, ``register`` puts ``TbqDequantLinearKernel`` first among vLLM's
CUDA mixed-precision linear kernels, so compressed-tensors' WNA16 scheme picks it for every layer the decode kernel
can take (``decode_layout.check_decode_shape``); W4A4/W4A8 layers stay on CUTLASS (``turboboa_export.vllm_int_scheme``
says why). Such a layer keeps two copies of its codes: the decode kernel's layout, used for
up to 16 rows (decode), and the stock kernel vLLM would have chosen without us (Machete, Marlin, Humming, ...), used
for more rows (prefill, large batches). Once on, vLLM's own switch skips it: ``VLLM_DISABLED_KERNELS=TbqDequantLinearKernel``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .decode_gemm import MAX_ROWS, decode_gemm
from .decode_layout import check_decode_shape, from_compressed_tensors


@dataclass
class RegisteredLinear:
    decode: Callable[[torch.Tensor], torch.Tensor]  # x -> y for at most MAX_ROWS rows (tbq's decode kernel)
    stock: Callable[[torch.Tensor], torch.Tensor]  # x -> y for more rows (a stock kernel)


LINEARS: dict[int, RegisteredLinear] = {}
_keys = itertools.count()


def register_linear(layer: torch.nn.Module, codes: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor],
                    stock: Callable[[torch.Tensor], torch.Tensor]) -> int:
    """Keep ``codes`` (the decode layout's) on ``layer`` as ``tbq_codes`` and return the key ``decode_linear``
    dispatches the layer's calls by: ``decode(x)`` for at most MAX_ROWS rows, ``stock(x)`` above."""
    layer.register_buffer("tbq_codes", codes, persistent=False)
    key = next(_keys)
    LINEARS[key] = RegisteredLinear(decode, stock)
    return key


@torch.library.custom_op("tbq::decode_linear", mutates_args=(), schema="(Tensor x, Tensor codes, int key) -> Tensor")
def decode_linear(x, codes, key):
    """y = x W^T for registered linear ``key`` (``codes``: its decode-layout codes, which give N): the decode path for
    at most 16 rows of x, the stock path otherwise. An opaque op, so that the row count is read when it runs (also
    inside CUDA-graph capture), not when vLLM traces the model."""
    entry = LINEARS[key]
    return entry.decode(x) if x.numel() // max(1, x.shape[-1]) <= MAX_ROWS else entry.stock(x)


@decode_linear.register_fake
def _(x, codes, key):
    return x.new_empty(*x.shape[:-1], codes.shape[0] * 16)


def _kernel_class():
    """Defined lazily: vLLM is an optional dependency."""
    from vllm.model_executor.kernels import linear
    from vllm.model_executor.kernels.linear.mixed_precision.MPLinearKernel import MPLinearKernel, MPLinearLayerConfig
    from vllm.platforms import PlatformEnum, current_platform

    def stock_class(c: MPLinearLayerConfig):
        """The kernel vLLM chooses for ``c`` when ours is not in its list."""
        kernels = linear._POSSIBLE_KERNELS[PlatformEnum.CUDA]
        ours = [k for k in kernels if k.__name__ == "TbqDequantLinearKernel"]
        for k in ours:
            kernels.remove(k)
        try:
            return linear.choose_mp_linear_kernel(c)
        finally:
            kernels[:0] = ours

    class TbqDequantLinearKernel(MPLinearKernel):
        """tbq's decode kernel (tbq_kernels/csrc/decode_gemm.cu) for up to 16 rows, vLLM's stock kernel above."""

        @classmethod
        def get_min_capability(cls) -> int:
            return 80  # mma.sync m16n8k16 with bf16

        @classmethod
        def can_implement(cls, c: MPLinearLayerConfig) -> tuple[bool, str | None]:
            k, n = c.partition_weight_shape
            if not current_platform.is_cuda():
                return False, "tbq's decode kernel runs on CUDA"
            if c.has_g_idx or c.act_type not in (torch.float16, torch.bfloat16):
                return False, "needs fp16/bf16 activations and no activation reordering"
            why = check_decode_shape(n, k, c.weight_type.size_bits, k if c.group_size == -1 else c.group_size)
            if why:
                return False, why
            try:
                stock_class(c)
            except ValueError as e:
                return False, f"no stock kernel for more than {MAX_ROWS} rows: {e}"
            return True, None

        def __init__(self, c: MPLinearLayerConfig, *names, **named) -> None:
            super().__init__(c, *names, **named)
            self.stock = stock_class(c)(c, *names, **named)

        def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
            w_q, w_s, w_zp, _ = self._get_weight_params(layer)
            k = self.config.partition_weight_shape[0]
            w = from_compressed_tensors(w_q.data, w_s.data, self.config.weight_type.size_bits, k,
                                        w_zp.data if self.config.zero_points else None, dtype=self.config.act_type)
            self.stock.process_weights_after_loading(layer)
            self.key = register_linear(layer, w.codes, lambda x: decode_gemm(x, w),
                                       lambda x: self.stock.apply_weights(layer, x))

        def apply_weights(self, layer: torch.nn.Module, x: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
            y = decode_linear(x, layer.tbq_codes, self.key)
            return y if bias is None else y + bias

    return TbqDequantLinearKernel


def enabled() -> bool:
    """Whether tbq's decode kernel is asked for (``TBQ_VLLM_KERNELS=1``)."""
    return os.environ.get("TBQ_VLLM_KERNELS") == "1"


def register() -> None:
    """With TBQ_VLLM_KERNELS=1, put our kernel first for CUDA mixed-precision linears (idempotent: vLLM may call
    plugins more than once)."""
    if not enabled():
        return
    from vllm.model_executor.kernels.linear import _POSSIBLE_KERNELS
    from vllm.platforms import PlatformEnum

    kernels = _POSSIBLE_KERNELS.setdefault(PlatformEnum.CUDA, [])
    if not any(k.__name__ == "TbqDequantLinearKernel" for k in kernels):
        kernels.insert(0, _kernel_class())
