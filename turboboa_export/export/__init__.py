"""Export formats: compressed-tensors pack-quantized for vLLM, and dense Hugging Face checkpoints."""
