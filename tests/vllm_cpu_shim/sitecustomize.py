"""Test-only shim for vLLM 0.25.1's CPU build, put on PYTHONPATH of the vLLM subprocess in
test_vllm_cpu.py::test_vllm_cpu_serves_rotated_export.

vLLM applies compressed-tensors ``transform_config`` transforms (HadamardTransform) with its unquantized GEMM; on
CPU that dispatch calls ``layer.cpu_linear``, which HadamardTransform never gets. This gives it plain
``torch.nn.functional.linear`` (what the CUDA path runs), so the rest of vLLM's transform path is exercised as is.
"""

try:
    import torch
    from vllm.model_executor.layers.quantization.compressed_tensors.transform.module import HadamardTransform

    HadamardTransform.cpu_linear = lambda self, x, weight, bias=None: torch.nn.functional.linear(x, weight, bias)
except ImportError:
    pass
