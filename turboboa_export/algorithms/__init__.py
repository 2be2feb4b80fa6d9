"""Quantization algorithms as pure tensor-in, tensor-out functions."""
