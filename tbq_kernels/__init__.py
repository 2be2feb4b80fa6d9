"""tbq's GPU kernels and the layouts they read.

``decode_layout`` repacks an exported linear (compressed-tensors, 2/3/4/8 bits) into the decode kernel's layout;
``decode_gemm`` runs the CUDA decode kernel (``csrc/decode_gemm.cu``, M <= 16); ``int_act`` holds the W4A4/W4A8
paths; ``reference`` is the plain-torch float64 definition every kernel is tested against; ``vllm_plugin`` is the
opt-in vLLM plugin (``TBQ_VLLM_KERNELS=1``).
"""
