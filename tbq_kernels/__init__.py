"""Dequant-GEMM kernels that read tbq's compressed-tensors export (int4/int8, symmetric or with zero points).

``layout.DequantWeight`` is the load-time form of one exported linear; ``ops.dequant_gemm`` runs the Triton
kernels on CUDA; ``reference.dequant_gemm_ref`` is the plain-torch definition every kernel is tested against.
"""

from .layout import DequantWeight, from_compressed_tensors
from .ops import dequant_gemm
from .reference import dequant_gemm_ref

__all__ = ["DequantWeight", "from_compressed_tensors", "dequant_gemm", "dequant_gemm_ref"]
